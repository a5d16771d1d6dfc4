"""Views: how the account shows as files. fs.py (the FUSE edge) asks the
composite root which view a path belongs to, and hands the call to it.

    base     the four nodes fs.py knows (DirNode, MessageRef, NewFile, Alias) and the View interface
    root     CompositeRoot: the main view, and hidden views looked up by name
    folders  folder directories and .eml files (the default layout)
    trash    .Trash-UID/ (freedesktop trash, hidden) over the \\Trash folder: GIO's and KIO's "Move to Trash"
"""

"""The background processes: the download worker (`processor`) and the `notifier`.

Both are plain threads over the blocking Redis `Store`; `runtime` starts them under
signal handling for the CLI.
"""

"""The background processes: the download worker (`processor`) and the `notifier`.

Both are plain threads over the blocking Redis `Store`; the CLI (`downloader worker`,
`downloader notifier`, `downloader up`) starts them under signal handling.
"""

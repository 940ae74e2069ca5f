module downloaderbench/rawclient

go 1.22

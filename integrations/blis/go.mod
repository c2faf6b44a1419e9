module molerd/blisbackend

go 1.22

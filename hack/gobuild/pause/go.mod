module difusor.local/gobuild/pause

go 1.26.0

module pollerbench/go-http

go 1.19

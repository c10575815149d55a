module pollerbench/go-echo

go 1.19

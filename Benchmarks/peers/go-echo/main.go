// go-echo: Go's net with a goroutine per connection, the Go peer of poller-echo.
//
//	go-echo [--host 127.0.0.1] [--port 0] [--idle-timeout SECONDS]
//
// With --idle-timeout, every Read is preceded by SetReadDeadline(now + timeout), as Go's
// net/http server does with ReadTimeout, and a connection idle that long is closed.
//
// Prints "go-echo: listening on HOST:PORT", echoes every byte on every connection
// (conn.Read / conn.Write with a 64 KiB buffer) and exits 0 on SIGINT/SIGTERM. GOMAXPROCS is
// left at its default (the number of CPUs in the affinity mask: 1 under `taskset -c 0`);
// scripts/bench.sh's all-cores instance sets GOMAXPROCS to the CPU count in the environment.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

var idleTimeout time.Duration

func serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64*1024)
	for {
		if idleTimeout > 0 {
			c.SetReadDeadline(time.Now().Add(idleTimeout))
		}
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port (0 picks one)")
	idle := flag.Float64("idle-timeout", 0, "close a connection idle this many seconds (0: never)")
	flag.Parse()
	idleTimeout = time.Duration(*idle * float64(time.Second))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		os.Exit(0)
	}()

	ln, err := net.Listen("tcp4", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-echo:", err)
		os.Exit(1)
	}
	fmt.Printf("go-echo: listening on %s:%d (Go net, goroutine per connection)\n", *host, ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			// EMFILE and friends: keep serving the connections we have.
			continue
		}
		go serve(c)
	}
}

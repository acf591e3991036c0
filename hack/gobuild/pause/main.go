// Command pause is the pod sandbox's process for the local node: it holds the pod's namespaces
// and does nothing else, like Kubernetes' own pause image (build/pause/linux/pause.c), which no
// registry can provide here. It exits on SIGINT or SIGTERM and reaps orphans when it is PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

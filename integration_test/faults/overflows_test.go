package faults_test

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// listenOverflows returns the kernel's count of connection attempts it dropped because a listening socket's
// accept queue was full (TcpExt ListenOverflows in /proc/net/netstat: every listener of the machine, since
// boot), and false where the kernel does not say (not Linux).
//
// It tells a fault of the network from a server that cannot keep up. PostgreSQL's postmaster accepts
// connections one at a time and forks a backend for each, with a queue of twice its backend slots (244 for
// max_connections = 100); a connection dropped from a full queue waits for the client's SYN to be sent again,
// a second and more later. When the machine is loaded and every client reconnects at once (a proxy resetting
// every connection, a pool replacing killed backends), the queue fills and no new connection opens for as
// long as the storm lasts.
func listenOverflows() (int64, bool) {
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	// The file pairs lines: a header of names, then the values, both starting with the same prefix.
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 8192), 1<<20)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if !sc.Scan() {
			break
		}
		values := strings.Fields(sc.Text())
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for i, name := range names {
			if name == "ListenOverflows" {
				n, err := strconv.ParseInt(values[i], 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// overflowSample is listenOverflows at one instant.
type overflowSample struct {
	at time.Time
	n  int64
}

// overflowWatch samples listenOverflows every 100 ms while a cell runs, so that a keyed call reported
// commit-unknown can say whether the server dropped connections during it.
type overflowWatch struct {
	mu      sync.Mutex
	samples []overflowSample
	ok      bool
	stop    context.CancelFunc
	done    chan struct{}
}

// watchOverflows starts sampling; Stop ends it.
func watchOverflows() *overflowWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &overflowWatch{stop: cancel, done: make(chan struct{})}
	n, ok := listenOverflows()
	w.ok = ok
	w.samples = append(w.samples, overflowSample{time.Now(), n})
	go func() {
		defer close(w.done)
		if !ok {
			return
		}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if n, ok := listenOverflows(); ok {
				w.mu.Lock()
				w.samples = append(w.samples, overflowSample{time.Now(), n})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// Stop ends the sampling and takes a last sample.
func (w *overflowWatch) Stop() {
	w.stop()
	<-w.done
	if n, ok := listenOverflows(); ok && w.ok {
		w.samples = append(w.samples, overflowSample{time.Now(), n})
	}
}

// during returns how many connection attempts the kernel dropped from full accept queues between from and to,
// counted from the last sample before from to the first after to (so a little more than the interval), and
// false when it cannot tell.
func (w *overflowWatch) during(from, to time.Time) (int64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ok || len(w.samples) == 0 {
		return 0, false
	}
	first, last := w.samples[0].n, w.samples[len(w.samples)-1].n
	for _, s := range w.samples {
		if !s.at.After(from) {
			first = s.n
		}
		if !s.at.Before(to) {
			last = s.n
			break
		}
	}
	return last - first, true
}

// total returns how many the kernel dropped while the watch ran.
func (w *overflowWatch) total() (int64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ok || len(w.samples) == 0 {
		return 0, false
	}
	return w.samples[len(w.samples)-1].n - w.samples[0].n, true
}

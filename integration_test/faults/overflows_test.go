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

// acceptQueue returns how many connections wait in the accept queue of the TCP socket listening on port (the
// largest such queue, over IPv4 and IPv6), from /proc/net/tcp and tcp6, where a listening socket's rx_queue
// is its accept backlog; false where the kernel does not say or nothing listens on port.
func acceptQueue(port int) (int, bool) {
	queue, found := 0, false
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue ...; the port is hex after the address's colon.
			fields := strings.Fields(sc.Text())
			if len(fields) < 5 || fields[3] != "0A" { // 0A: TCP_LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			p, err := strconv.ParseInt(hexPort, 16, 32)
			if !ok || err != nil || int(p) != port {
				continue
			}
			_, rx, _ := strings.Cut(fields[4], ":")
			if n, err := strconv.ParseInt(rx, 16, 32); err == nil {
				queue, found = max(queue, int(n)), true
			}
		}
		f.Close()
	}
	return queue, found
}

// overflowSample is listenOverflows, and the server's accept queue, at one instant.
type overflowSample struct {
	at    time.Time
	n     int64
	queue int // connections waiting for the server to accept them; -1 when unknown
}

// overflowWatch samples listenOverflows and the accept queue of the server's port every 100 ms while a cell
// runs, so that a keyed call reported commit-unknown can say whether the server was keeping new connections
// waiting, or dropping them, during it.
type overflowWatch struct {
	mu      sync.Mutex
	port    int
	samples []overflowSample
	ok      bool
	stop    context.CancelFunc
	done    chan struct{}
}

// sample reads both counts now.
func (w *overflowWatch) sample() (overflowSample, bool) {
	n, ok := listenOverflows()
	q, found := acceptQueue(w.port)
	if !found {
		q = -1
	}
	return overflowSample{time.Now(), n, q}, ok
}

// watchOverflows starts sampling, for the server listening on port; Stop ends it.
func watchOverflows(port int) *overflowWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &overflowWatch{port: port, stop: cancel, done: make(chan struct{})}
	first, ok := w.sample()
	w.ok = ok
	w.samples = append(w.samples, first)
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
			if s, ok := w.sample(); ok {
				w.mu.Lock()
				w.samples = append(w.samples, s)
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
	if s, ok := w.sample(); ok && w.ok {
		w.samples = append(w.samples, s)
	}
}

// during returns how many connection attempts the kernel dropped from full accept queues between from and to,
// counted from the last sample before from to the first after to (so a little more than the interval), and
// the longest the server's accept queue was in that time (-1 when unknown); false when it cannot tell.
func (w *overflowWatch) during(from, to time.Time) (dropped int64, queue int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ok || len(w.samples) == 0 {
		return 0, -1, false
	}
	first, last, queue := w.samples[0].n, w.samples[len(w.samples)-1].n, -1
	for _, s := range w.samples {
		if !s.at.After(from) {
			first = s.n
		}
		if !s.at.Before(from) && !s.at.After(to) {
			queue = max(queue, s.queue)
		}
		if !s.at.Before(to) {
			last = s.n
			break
		}
	}
	return last - first, queue, true
}

// total returns how many the kernel dropped while the watch ran, and the server's longest accept queue.
func (w *overflowWatch) total() (dropped int64, queue int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ok || len(w.samples) == 0 {
		return 0, -1, false
	}
	queue = -1
	for _, s := range w.samples {
		queue = max(queue, s.queue)
	}
	return w.samples[len(w.samples)-1].n - w.samples[0].n, queue, true
}

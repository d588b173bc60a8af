package faultnet

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Direction names one or both directions of a proxied connection.
type Direction int

const (
	// ToServer is the direction from the client to the server.
	ToServer Direction = 1 << iota
	// ToClient is the direction from the server to the client.
	ToClient
	// Both is both directions.
	Both = ToServer | ToClient
)

// String returns the direction's name.
func (d Direction) String() string {
	switch d {
	case ToServer:
		return "ToServer"
	case ToClient:
		return "ToClient"
	case Both:
		return "Both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// dialTimeout bounds the proxy's connection to the target for each accepted client.
const dialTimeout = 5 * time.Second

// Proxy forwards the connections it accepts on a loopback port to a target address, with the latency and faults
// it is told to add. Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every link's goroutines

	delay     [2]atomic.Int64 // nanoseconds, indexed by dirIndex
	refuse    atomic.Bool
	ruleCount atomic.Int64

	flights, toServer, toClient, accepted, cancels atomic.Int64

	mu      sync.Mutex
	closed  bool
	links   map[*link]struct{}
	hang    Direction
	gen     uint64        // incremented by Resume: holds HangAfter rules set in motion before it are void
	changed chan struct{} // closed, and replaced, whenever a hang starts or ends
	rules   []*Rule
}

// New starts a proxy listening on 127.0.0.1 on a port of the system's choosing, forwarding to target (a
// host:port). It connects to target only when a client connects; a client whose connection to target fails is
// reset. Close stops it.
func New(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultnet: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, links: map[*link]struct{}{}, changed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Start is New for a test: it fails t if the proxy cannot start, and closes the proxy when t ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// ForDSN starts a proxy for t in front of the server dsn names (its first host, over TCP) and returns it with
// dsn rewritten to connect through it. The proxy is closed when t ends.
func ForDSN(t testing.TB, dsn string) (*Proxy, string) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("faultnet: %v", err)
	}
	if strings.HasPrefix(cfg.Host, "/") {
		t.Fatalf("faultnet: %s is a Unix socket; the proxy forwards TCP only", cfg.Host)
	}
	p := Start(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	proxied, err := p.RewriteDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return p, proxied
}

// Addr returns the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// RewriteDSN returns dsn (a postgres:// URL or keyword/value string) with its host and port replaced by the
// proxy's, every other setting kept. A list of hosts becomes the proxy alone.
func (p *Proxy) RewriteDSN(dsn string) (string, error) {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return "", fmt.Errorf("faultnet: %w", err)
	}
	host, port, _ := net.SplitHostPort(p.Addr())
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("faultnet: %w", err)
		}
		u.Host = p.Addr()
		q := u.Query()
		q.Del("host")
		q.Del("port")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In the keyword/value form a later keyword overrides an earlier one.
	return dsn + " host=" + host + " port=" + port, nil
}

// Close stops the proxy: it closes the listener, resets every connection and waits until all of the proxy's
// goroutines have returned. It returns the listener's close error, if any; closing twice is harmless.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	links := p.snapshot()
	p.mu.Unlock()
	err := p.ln.Close()
	for _, l := range links {
		l.close(true, true)
	}
	p.wg.Wait()
	return err
}

// SetLatency delays every flight by toServer on its way from a client to the server and by toClient on its way
// back, from the moment it reaches the proxy, on current and future connections. Zero removes a delay.
func (p *Proxy) SetLatency(toServer, toClient time.Duration) {
	p.delay[dirIndex(ToServer)].Store(int64(max(toServer, 0)))
	p.delay[dirIndex(ToClient)].Store(int64(max(toClient, 0)))
}

// SetRTT adds rtt to every round trip, half in each direction.
func (p *Proxy) SetRTT(rtt time.Duration) { p.SetLatency(rtt/2, rtt-rtt/2) }

// Latency returns the delays set by [Proxy.SetLatency].
func (p *Proxy) Latency() (toServer, toClient time.Duration) {
	return time.Duration(p.delay[dirIndex(ToServer)].Load()), time.Duration(p.delay[dirIndex(ToClient)].Load())
}

// ResetAll resets every open connection: an RST (SO_LINGER 0, then close) to the client and to the server.
// Bytes the proxy holds for them are dropped. New connections are accepted as before.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	links := p.snapshot()
	p.mu.Unlock()
	for _, l := range links {
		l.close(true, true)
	}
}

// Hang stops bytes flowing in direction d on every connection, current and new, until [Proxy.Resume]. The
// sockets stay open and the proxy keeps reading until its buffers fill, so the senders see a peer that has
// stopped answering, not one that has gone. A byte already being written when Hang is called may still arrive.
func (p *Proxy) Hang(d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang |= d & Both
	p.notify()
}

// Resume ends every hang: the ones [Proxy.Hang] started and the ones [HangAfter] rules started. Bytes held back
// are delivered, in order.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang = 0
	p.gen++
	for l := range p.links {
		l.hang = 0
	}
	p.notify()
}

// RefuseNew makes the proxy reset every connection it accepts from now on (refuse true), or accept them again
// (false). The client's connect succeeds, as the kernel completes the handshake, and its first read or write
// fails with a reset. Open connections are not touched.
func (p *Proxy) RefuseNew(refuse bool) { p.refuse.Store(refuse) }

// Stats are the proxy's counters since it started or since [Proxy.ResetStats].
type Stats struct {
	// Flights counts the clients' flights: sends after the server handed them the turn (see the package doc),
	// the round trips the clients waited for. Opening a connection with trust authentication is one, and so
	// is a cancel request; a Terminate is none.
	Flights int64
	// ToServer and ToClient count the bytes delivered in each direction.
	ToServer, ToClient int64
	// Connections counts the connections accepted (refused ones excluded), cancel requests included: each
	// comes on a connection of its own.
	Connections int64
	// CancelRequests counts the connections that carried a cancel request (pgx sends one when a context
	// ends a statement, and when it closes a connection that broke mid-statement).
	CancelRequests int64
	// Open is the number of connections open now, and Held the number of them a [HangAfter] rule holds;
	// [Proxy.ResetStats] leaves both alone.
	Open, Held int
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	open, held := len(p.links), 0
	for l := range p.links {
		if l.hang != 0 {
			held++
		}
	}
	p.mu.Unlock()
	return Stats{
		Flights:        p.flights.Load(),
		ToServer:       p.toServer.Load(),
		ToClient:       p.toClient.Load(),
		Connections:    p.accepted.Load(),
		CancelRequests: p.cancels.Load(),
		Open:           open,
		Held:           held,
	}
}

// ResetStats sets the counters to zero.
func (p *Proxy) ResetStats() {
	p.flights.Store(0)
	p.toServer.Store(0)
	p.toClient.Store(0)
	p.accepted.Store(0)
	p.cancels.Store(0)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of file descriptors and the like: wait for some to be released
			time.Sleep(10 * time.Millisecond)
			continue
		}
		client := c.(*net.TCPConn)
		if p.refuse.Load() {
			resetConn(client)
			continue
		}
		l := newLink(p, client)
		if !p.add(l) {
			resetConn(client)
			continue
		}
		p.accepted.Add(1)
		go l.run()
	}
}

// add registers l and its goroutines, unless the proxy is closed.
func (p *Proxy) add(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.links[l] = struct{}{}
	p.wg.Add(1) // l.run; it adds its other goroutines while this one is counted
	return true
}

func (p *Proxy) remove(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.links, l)
}

// snapshot returns the open links. p.mu must be held.
func (p *Proxy) snapshot() []*link {
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	return links
}

// notify wakes every writer waiting for a hang to end. p.mu must be held.
func (p *Proxy) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func dirIndex(d Direction) int {
	if d == ToServer {
		return 0
	}
	return 1
}

// resetConn closes c with an RST rather than a FIN.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

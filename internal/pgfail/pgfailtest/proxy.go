// Package pgfailtest injects the connection faults that package pgfail classifies, deterministically, for
// tests against a real PostgreSQL: a loopback TCP forwarder that can lose the reply to a chosen statement
// after the server executed it, swallow a statement so that the server never sees it, and play a server
// restart (connections reset, new ones refused or answered FATAL 57P03). It reads the protocol's framing
// only and needs sslmode=disable.
//
// It is deliberately small: the fault suite's proxy (latency, partitions, random resets) lives elsewhere.
package pgfailtest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards connections to a PostgreSQL server and injects faults on request.
type Proxy struct {
	t      testing.TB
	target string
	addr   string

	mu         sync.Mutex
	ln         net.Listener
	links      map[*link]struct{}
	down       bool // between Down and Up
	startingUp bool // while down: accept and answer FATAL 57P03 instead of refusing
	fault      *fault

	faults   chan struct{} // one value per fault injected
	accepted atomic.Int64
	wg       sync.WaitGroup
}

// fault is an armed fault: what to do to the next statements matching match.
type fault struct {
	left    int
	match   func(sql string) bool
	swallow bool // do not forward the statement; otherwise forward it and lose its reply
}

type link struct {
	client, server net.Conn
	stmts          map[string]string // prepared statement name → SQL, for Bind messages
	cut            atomic.Bool       // the reply in flight must not reach the client
}

// New starts a proxy to the server of dsn (a URL) and returns it with dsn rewritten to go through it. The
// proxy stops when t ends.
func New(t testing.TB, dsn string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("pgfailtest: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgfailtest: %v", err)
	}
	p := &Proxy{t: t, target: u.Host, addr: ln.Addr().String(), ln: ln, links: map[*link]struct{}{}, faults: make(chan struct{}, 64)}
	p.serve(ln)
	t.Cleanup(p.close)
	u.Host = p.addr
	return p, u.String()
}

// IsCommit matches a COMMIT statement.
func IsCommit(sql string) bool {
	return strings.EqualFold(strings.TrimRight(strings.TrimSpace(sql), "; "), "commit")
}

// LoseReply arms the proxy for the next n statements matching match: each is forwarded, the server executes
// it, and its whole reply (up to ReadyForQuery, so the statement has certainly completed) is dropped; then
// the client's connection is reset. A COMMIT so treated committed, and the client cannot know.
func (p *Proxy) LoseReply(n int, match func(sql string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = &fault{left: n, match: match}
}

// Swallow arms the proxy for the next n statements matching match: each is dropped before the server sees
// it and the client's connection is reset, while the server's connection stays open, as when a network path
// dies: the backend keeps its transaction open (idle in transaction) until the proxy stops or the backend is
// terminated.
func (p *Proxy) Swallow(n int, match func(sql string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = &fault{left: n, match: match, swallow: true}
}

// AwaitFault waits until an armed fault has been injected.
func (p *Proxy) AwaitFault() {
	p.t.Helper()
	select {
	case <-p.faults:
	case <-time.After(30 * time.Second):
		p.t.Fatal("pgfailtest: no fault was injected")
	}
}

// Faults returns how many faults have been injected and not awaited.
func (p *Proxy) Faults() int { return len(p.faults) }

// Accepted returns the number of connections accepted, the ones answered 57P03 included.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Down plays a server going away: every connection is reset and new ones are refused (connection refused),
// or, with startingUp, accepted and answered FATAL 57P03 (the database system is starting up), until Up.
func (p *Proxy) Down(startingUp bool) {
	p.mu.Lock()
	links := p.takeLinks()
	p.down, p.startingUp = true, startingUp
	if !startingUp {
		_ = p.ln.Close()
	}
	p.mu.Unlock()
	for _, l := range links {
		p.drop(l, true)
	}
}

// Up plays the server back: connections are forwarded again.
func (p *Proxy) Up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	refusing := p.down && !p.startingUp
	p.down, p.startingUp = false, false
	if !refusing {
		return
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Errorf("pgfailtest: listen again on %s: %v", p.addr, err)
		return
	}
	p.ln = ln
	p.serve(ln)
}

func (p *Proxy) serve(ln net.Listener) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				_, _ = c.Write(startingUpResponse)
				_ = c.Close()
				continue
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			l := &link{client: c, server: s, stmts: map[string]string{}}
			p.links[l] = struct{}{}
			p.wg.Add(2)
			p.mu.Unlock()
			go p.clientToServer(l)
			go p.serverToClient(l)
		}
	}()
}

// startingUpResponse is the ErrorResponse PostgreSQL sends to a connection attempt while it recovers.
var startingUpResponse = func() []byte {
	var body bytes.Buffer
	for _, f := range [][2]string{{"S", "FATAL"}, {"V", "FATAL"}, {"C", "57P03"}, {"M", "the database system is starting up"}} {
		body.WriteString(f[0] + f[1])
		body.WriteByte(0)
	}
	body.WriteByte(0)
	msg := []byte{'E', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], uint32(body.Len()+4))
	return append(msg, body.Bytes()...)
}()

// clientToServer forwards the client's messages and applies an armed fault to a matching statement.
func (p *Proxy) clientToServer(l *link) {
	defer p.wg.Done()
	hdr, body, err := readMessage(l.client, false) // the startup packet has no type byte
	if err != nil || write(l.server, hdr, body) != nil {
		p.drop(l, true)
		return
	}
	for {
		hdr, body, err := readMessage(l.client, true)
		if err != nil {
			p.drop(l, true)
			return
		}
		if sql, executes := l.statement(hdr[0], body); executes {
			if swallow, hit := p.take(sql); hit && swallow {
				p.faults <- struct{}{}
				p.drop(l, false) // the server's side stays open, its transaction idle
				return
			} else if hit {
				l.cut.Store(true) // before the server can answer
			}
		}
		if write(l.server, hdr, body) != nil {
			p.drop(l, true)
			return
		}
	}
}

// statement returns the SQL a message executes: a simple Query's, or a Bind's prepared statement's. Parse
// messages are remembered, not executed.
func (l *link) statement(typ byte, body []byte) (string, bool) {
	switch typ {
	case 'Q':
		return cstring(body), true
	case 'P':
		name := cstring(body)
		l.stmts[name] = cstring(body[len(name)+1:])
	case 'B':
		portal := cstring(body)
		sql, ok := l.stmts[cstring(body[len(portal)+1:])]
		return sql, ok
	}
	return "", false
}

// take consumes the armed fault if sql matches it.
func (p *Proxy) take(sql string) (swallow, hit bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fault
	if f == nil || f.left <= 0 || !f.match(sql) {
		return false, false
	}
	f.left--
	return f.swallow, true
}

// serverToClient forwards the server's messages, except a reply that is to be lost: that one is read up to
// ReadyForQuery, so the statement has completed on the server, and then the client is reset.
func (p *Proxy) serverToClient(l *link) {
	defer p.wg.Done()
	for {
		hdr, body, err := readMessage(l.server, true)
		if err != nil {
			p.drop(l, true)
			return
		}
		if l.cut.Load() {
			if hdr[0] == 'Z' {
				p.faults <- struct{}{}
				p.drop(l, true)
				return
			}
			continue
		}
		if write(l.client, hdr, body) != nil {
			p.drop(l, true)
			return
		}
	}
}

func readMessage(r io.Reader, typed bool) (hdr, body []byte, err error) {
	n := 4
	if typed {
		n = 5
	}
	hdr = make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	body = make([]byte, binary.BigEndian.Uint32(hdr[n-4:])-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, nil, err
	}
	return hdr, body, nil
}

func write(w io.Writer, hdr, body []byte) error {
	_, err := w.Write(append(hdr, body...))
	return err
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// drop resets the client's connection (no FIN: the client sees a reset) and, with server, closes the
// server's, which ends the backend's session.
func (p *Proxy) drop(l *link, server bool) {
	if tc, ok := l.client.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = l.client.Close()
	if server {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
		_ = l.server.Close()
	}
}

// takeLinks empties the set of links; p.mu must be held.
func (p *Proxy) takeLinks() []*link {
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	clear(p.links)
	return links
}

func (p *Proxy) close() {
	p.mu.Lock()
	_ = p.ln.Close()
	links := p.takeLinks()
	p.mu.Unlock()
	for _, l := range links {
		_ = l.client.Close()
		_ = l.server.Close()
	}
	p.wg.Wait()
}

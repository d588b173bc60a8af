package faultnet

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// readBufSize is each direction's read buffer: the most a flight that arrives at once is read in one go.
	readBufSize = 64 << 10
	// queueLen bounds the flights a direction holds (delayed, or hung) before it stops reading from its
	// source, which then sees the backpressure of a slow network.
	queueLen = 64
)

// A link is one proxied connection: a client socket, a server socket, and for each direction a reader that
// frames messages into flights and a writer that delivers them when they are due. When nothing makes a flight
// wait (no delay, nothing queued, no hang) the reader writes it itself, which saves a goroutine hand-over
// per hop (about 100µs a round trip on a 2-core VM). The two directions talk through atomics only: the
// client's reader tells the server's reader which reply a rule concerns, and whoever writes to the client
// tells the client's reader that the turn has passed to the client.
type link struct {
	p          *Proxy
	client     *net.TCPConn
	done       chan struct{} // closed when the link closes
	closeOnce  sync.Once
	dialCtx    context.Context
	cancelDial context.CancelFunc
	toServer   chan item
	toClient   chan item
	pending    [2]atomic.Int64 // items handed to each direction's writer and not yet done with

	mu     sync.Mutex
	server *net.TCPConn // nil until dialled

	hang Direction // directions a HangAfter rule holds; guarded by p.mu

	turn   atomic.Bool   // the server handed the turn to the client since the client last sent
	opaque atomic.Bool   // encryption negotiated (or unknown framing): bytes are forwarded unparsed
	answer atomic.Bool   // an SSLRequest or GSSENCRequest awaits the server's one-byte answer
	reply  atomic.Uint64 // a rule waiting for its statement's reply: ReadyForQuery number << 8 | Action
	gen    atomic.Uint64 // the proxy's hang generation when that rule fired
}

type itemKind int

const (
	itemData  itemKind = iota
	itemHang           // hold this direction (a HangAfter rule)
	itemEOF            // the source closed: close the link after what came before
	itemReset          // reset both sides (a ResetInstead rule)
	itemLose           // reset the client, close the server (a LoseReply rule)
)

// item is what a reader hands its writer: a flight of bytes, or an instruction, each due at a given time.
type item struct {
	kind itemKind
	data []byte
	due  time.Time
	turn bool   // data holds a message that hands the turn to the client
	gen  uint64 // for itemHang: the proxy's hang generation when the rule fired
}

func newLink(p *Proxy, client *net.TCPConn) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{
		p:          p,
		client:     client,
		done:       make(chan struct{}),
		dialCtx:    ctx,
		cancelDial: cancel,
		toServer:   make(chan item, queueLen),
		toClient:   make(chan item, queueLen),
	}
	l.turn.Store(true) // the startup packet is the client's first flight
	return l
}

// run connects to the target, starts the writers and the server's reader, and reads the client.
func (l *link) run() {
	defer l.p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(l.dialCtx, "tcp", l.p.target)
	if err != nil {
		l.close(true, true)
		return
	}
	server := c.(*net.TCPConn)
	l.mu.Lock()
	select {
	case <-l.done:
		l.mu.Unlock()
		resetConn(server)
		return
	default:
	}
	l.server = server
	l.mu.Unlock()

	l.p.wg.Add(3)
	go l.write(ToServer, server, l.toServer)
	go l.write(ToClient, l.client, l.toClient)
	go l.readServer(server)
	l.readClient(server)
}

// close closes both sockets, with an RST where asked, once; the link's goroutines then return.
func (l *link) close(resetClient, resetServer bool) {
	l.closeOnce.Do(func() {
		close(l.done)
		l.cancelDial()
		l.mu.Lock()
		server := l.server
		l.mu.Unlock()
		closeConn(l.client, resetClient)
		if server != nil {
			closeConn(server, resetServer)
		}
		l.p.remove(l)
	})
}

func closeConn(c *net.TCPConn, reset bool) {
	if reset {
		resetConn(c)
		return
	}
	_ = c.Close()
}

// readClient frames what the client sends, counts its flights and applies the rules.
func (l *link) readClient(server *net.TCPConn) {
	br := bufio.NewReaderSize(l.client, readBufSize)
	b := &batch{l: l, dir: ToServer, dst: server, q: l.toServer}
	untyped := true    // the next packet has no type byte: startup, SSLRequest, GSSENCRequest, CancelRequest
	var syncs uint64   // packets sent that the server answers with exactly one ReadyForQuery
	var hangAt uint64  // syncs value after which a HangAfter rule holds this direction; 0 for none
	var hangGen uint64 // the proxy's hang generation when that rule fired
	for {
		if !b.await(br) {
			return
		}
		if l.opaque.Load() {
			b.buf = appendBuffered(b.buf, br)
			if !b.flush() {
				return
			}
			continue
		}
		msg, ok := b.next(br, untyped)
		if !ok {
			return
		}
		if msg == nil { // not the protocol: forward the rest as it comes
			l.opaque.Store(true)
			continue
		}
		if msg[0] != 'X' && l.turn.Swap(false) { // a Terminate expects no answer: no round trip
			l.p.flights.Add(1)
		}
		if untyped {
			switch packetCode(msg) {
			case codeSSLRequest, codeGSSENCRequest:
				l.answer.Store(true)
			case codeCancelRequest:
				l.p.cancels.Add(1)
			default: // a startup message; typed messages follow
				untyped = false
				syncs++
			}
		} else {
			if (msg[0] == 'Q' || msg[0] == 'P') && l.p.ruleCount.Load() > 0 {
				if sql, ok := querySQL(msg); ok {
					switch act, gen := l.p.fire(sql); act {
					case ResetInstead:
						b.buf = b.buf[:len(b.buf)-len(msg)]
						b.control(itemReset, 0)
						return
					case LoseReply, HangAfter:
						// The statement's reply ends with the ReadyForQuery for the next Query or Sync.
						l.gen.Store(gen)
						l.reply.Store((syncs+1)<<8 | uint64(act))
						if act == HangAfter {
							hangAt, hangGen = syncs+1, gen
						}
					}
				}
			}
			switch msg[0] {
			case 'Q', 'S', 'F':
				syncs++
			}
		}
		if hangAt != 0 && syncs == hangAt {
			hangAt = 0
			if !b.control(itemHang, hangGen) {
				return
			}
		}
		if br.Buffered() == 0 && !b.flush() {
			return
		}
	}
}

// readServer frames what the server sends, notes when it hands the turn to the client, and carries out the
// reply half of LoseReply and HangAfter rules.
func (l *link) readServer(server *net.TCPConn) {
	defer l.p.wg.Done()
	br := bufio.NewReaderSize(server, readBufSize)
	b := &batch{l: l, dir: ToClient, dst: l.client, q: l.toClient}
	var ready uint64 // ReadyForQuery messages seen
	for {
		if !b.await(br) {
			return
		}
		if l.opaque.Load() {
			b.buf = appendBuffered(b.buf, br)
			if !b.flush() {
				return
			}
			continue
		}
		if l.answer.Load() {
			l.answer.Store(false)
			c, _ := br.Peek(1) // await made sure a byte is there
			switch c[0] {
			case 'S', 'G': // TLS or GSS encryption starts with the client's next bytes
				l.opaque.Store(true)
				fallthrough
			case 'N':
				b.buf = append(b.buf, c[0])
				b.turn = true
				_, _ = br.Discard(1)
				if !b.flush() {
					return
				}
				continue
			}
			// Otherwise an ErrorResponse, from a server that does not know the request: a typed message.
		}
		if r := l.reply.Load(); r != 0 && ready+1 >= r>>8 { // this message answers the rule's statement
			switch Action(r & 0xff) {
			case LoseReply:
				typ, size, err := peekSize(br, false)
				if err == nil {
					_, err = br.Discard(size)
				}
				if err != nil || typ == 'Z' {
					l.reply.CompareAndSwap(r, 0)
					b.control(itemLose, 0)
					return
				}
				if br.Buffered() == 0 && !b.flush() {
					return
				}
				continue
			case HangAfter:
				gen := l.gen.Load()
				l.reply.CompareAndSwap(r, 0)
				if !b.control(itemHang, gen) {
					return
				}
			}
		}
		msg, ok := b.next(br, false)
		if !ok {
			return
		}
		if msg == nil {
			l.opaque.Store(true)
			continue
		}
		switch msg[0] {
		case 'Z':
			ready++
			b.turn = true
		case 'R':
			b.turn = b.turn || authRequestsAnswer(msg)
		case 'G', 'W': // CopyInResponse, CopyBothResponse: the client sends the data
			b.turn = true
		}
		if br.Buffered() == 0 && !b.flush() {
			return
		}
	}
}

// write delivers one direction's items in order, each when it is due and when the direction is not hung.
func (l *link) write(dir Direction, dst *net.TCPConn, q <-chan item) {
	defer l.p.wg.Done()
	var w waiter
	pending := &l.pending[dirIndex(dir)]
	for {
		var it item
		select {
		case it = <-q:
		case <-l.done:
			return
		}
		if !l.writeItem(dir, dst, it, &w) {
			return
		}
		pending.Add(-1)
	}
}

// writeItem carries out one item of direction dir, writing to dst: it waits until the item is due, then until
// the direction flows. It returns false when the link is done.
func (l *link) writeItem(dir Direction, dst *net.TCPConn, it item, w *waiter) bool {
	if !w.until(it.due, l.done) {
		return false
	}
	switch it.kind {
	case itemHang:
		l.p.mu.Lock()
		if it.gen == l.p.gen { // no Resume since the rule fired
			l.hang |= dir
		}
		l.p.mu.Unlock()
		return true
	case itemReset:
		l.close(true, true)
		return false
	case itemLose:
		l.close(true, false)
		return false
	}
	if !l.flowing(dir) {
		return false
	}
	if it.kind == itemEOF {
		l.close(false, false)
		return false
	}
	if it.turn {
		// Before the write: the client may answer before Write returns.
		l.turn.Store(true)
	}
	n, err := dst.Write(it.data)
	if dir == ToServer {
		l.p.toServer.Add(int64(n))
	} else {
		l.p.toClient.Add(int64(n))
	}
	if err != nil {
		l.close(true, true)
		return false
	}
	return true
}

// hung reports whether direction dir is held now.
func (l *link) hung(dir Direction) bool {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return (l.p.hang|l.hang)&dir != 0
}

// flowing waits until direction dir is not hung, and returns false if the link closes first.
func (l *link) flowing(dir Direction) bool {
	for {
		l.p.mu.Lock()
		blocked := (l.p.hang|l.hang)&dir != 0
		changed := l.p.changed
		l.p.mu.Unlock()
		if !blocked {
			return true
		}
		select {
		case <-changed:
		case <-l.done:
			return false
		}
	}
}

// batch gathers the messages of one flight for a reader and hands them to its writer.
type batch struct {
	l    *link
	dir  Direction
	dst  *net.TCPConn // where the direction writes to
	q    chan<- item  // the direction's writer
	buf  []byte
	at   time.Time // when the flight's first byte arrived
	turn bool
}

// await blocks until br holds a byte, when the batch is empty, and stamps the new flight's arrival. When br's
// source ends it passes that on and returns false.
func (b *batch) await(br *bufio.Reader) bool {
	if len(b.buf) > 0 {
		return true
	}
	if _, err := br.Peek(1); err != nil {
		b.sourceEnded(err)
		return false
	}
	b.at = time.Now()
	return true
}

// next reads the message at the head of br onto the batch and returns it. It flushes the batch first when the
// message has not fully arrived, so a slow message never holds back earlier ones. It returns a nil message
// when the bytes are not the protocol's framing, and false when the link is done.
func (b *batch) next(br *bufio.Reader, untyped bool) ([]byte, bool) {
	header := 5
	if untyped {
		header = 4
	}
	if br.Buffered() < header && !b.flush() {
		return nil, false
	}
	_, size, err := peekSize(br, untyped)
	if errors.Is(err, errFraming) {
		return nil, true
	}
	if err != nil {
		b.sourceEnded(err)
		return nil, false
	}
	if br.Buffered() < size && !b.flush() {
		return nil, false
	}
	start := len(b.buf)
	b.buf, err = appendMessage(b.buf, br, size)
	if err != nil { // the source ended mid-message: the partial message goes nowhere
		b.buf = b.buf[:start]
		b.sourceEnded(err)
		return nil, false
	}
	return b.buf[start:], true
}

// sourceEnded passes on the end of the reader's source: a clean end closes the link once what is pending has
// been delivered; a reset (or the link's own closing) resets it now.
func (b *batch) sourceEnded(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		b.control(itemEOF, 0)
		return
	}
	b.l.close(true, true)
}

// flush hands the gathered bytes to the writer, due after the direction's delay. It returns false when the
// link is done.
func (b *batch) flush() bool {
	if len(b.buf) == 0 {
		return true
	}
	it := item{kind: itemData, data: b.buf, due: b.due(b.at), turn: b.turn}
	b.at = time.Now()
	if b.direct(it) {
		b.buf, b.turn = b.buf[:0], false // written: the buffer can be used again
		return !b.closed()
	}
	b.buf, b.turn = nil, false
	return b.send(it)
}

// direct writes it from the reader's goroutine, saving the hand-over to the writer, when nothing makes it
// wait: no delay, nothing queued or being written, no hang. It returns false when it did not write.
func (b *batch) direct(it item) bool {
	i := dirIndex(b.dir)
	if b.l.p.delay[i].Load() != 0 || b.l.pending[i].Load() != 0 || b.l.hung(b.dir) {
		return false
	}
	var w waiter
	b.l.writeItem(b.dir, b.dst, it, &w)
	return true
}

func (b *batch) closed() bool {
	select {
	case <-b.l.done:
		return true
	default:
		return false
	}
}

// control flushes, then hands the writer an instruction, due after the direction's delay from now.
func (b *batch) control(kind itemKind, gen uint64) bool {
	return b.flush() && b.send(item{kind: kind, due: b.due(time.Now()), gen: gen})
}

func (b *batch) due(at time.Time) time.Time {
	return at.Add(time.Duration(b.l.p.delay[dirIndex(b.dir)].Load()))
}

func (b *batch) send(it item) bool {
	pending := &b.l.pending[dirIndex(b.dir)]
	pending.Add(1)
	select {
	case b.q <- it:
		return true
	case <-b.l.done:
		return false
	}
}

package faultnet_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pgcc/pgcc/internal/faultnet"
)

// Messages of the protocol, built by hand for the fake server and client below.
func message(typ byte, body []byte) []byte {
	m := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
	return append(m, body...)
}

func startupPacket() []byte {
	body := append(binary.BigEndian.AppendUint32(nil, 196608), "user\x00u\x00\x00"...)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

var (
	authOK        = message('R', []byte{0, 0, 0, 0})
	readyForQuery = message('Z', []byte{'I'})
	selectOne     = message('Q', []byte("select 1\x00"))
	terminate     = message('X', nil)
	commandDone   = message('C', []byte("SELECT 1\x00"))
)

// writeSplit writes b in pieces of n bytes, pausing between them so that each is a read of its own on the
// other side.
func writeSplit(c net.Conn, b []byte, n int) error {
	for len(b) > 0 {
		k := min(n, len(b))
		if _, err := c.Write(b[:k]); err != nil {
			return err
		}
		b = b[k:]
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// readUntilReady reads messages until a ReadyForQuery.
func readUntilReady(br *bufio.Reader) error {
	for {
		h := make([]byte, 5)
		if _, err := io.ReadFull(br, h); err != nil {
			return err
		}
		if _, err := br.Discard(int(binary.BigEndian.Uint32(h[1:])) - 4); err != nil {
			return err
		}
		if h[0] == 'Z' {
			return nil
		}
	}
}

// fakeServer accepts one connection and plays a server whose every message arrives in pieces: an
// authentication, then one answer per Query, until the client terminates.
func fakeServer(t *testing.T, ln net.Listener) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			h := make([]byte, 4)
			if _, err := io.ReadFull(br, h); err != nil {
				return err
			}
			if _, err := br.Discard(int(binary.BigEndian.Uint32(h)) - 4); err != nil {
				return err
			}
			if err := writeSplit(c, append(append([]byte{}, authOK...), readyForQuery...), 1); err != nil {
				return err
			}
			for {
				typ, err := br.ReadByte()
				if err != nil {
					return err
				}
				if _, err := io.ReadFull(br, h); err != nil {
					return err
				}
				if _, err := br.Discard(int(binary.BigEndian.Uint32(h)) - 4); err != nil {
					return err
				}
				switch typ {
				case 'X':
					return nil
				case 'Q':
					if err := writeSplit(c, append(append([]byte{}, commandDone...), readyForQuery...), 3); err != nil {
						return err
					}
				}
			}
		}()
	}()
	return done
}

// TestFramingAcrossSplitReads: messages cut at every byte, both ways, are framed and counted right.
func TestFramingAcrossSplitReads(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := faultnet.Start(t, ln.Addr().String())
	served := fakeServer(t, ln)

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if err := writeSplit(c, startupPacket(), 3); err != nil {
		t.Fatal(err)
	}
	if err := readUntilReady(br); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := writeSplit(c, selectOne, 4); err != nil { // one flight, in pieces
			t.Fatal(err)
		}
		if err := readUntilReady(br); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.Stats().Flights; got != 3 {
		t.Errorf("%d flights, want 3: the startup packet and two queries", got)
	}
	if _, err := c.Write(terminate); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("fake server: %v", err)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after the server closed, the client read %v, want EOF", err)
	}
}

// TestLoseReplyAcrossSplitReads drops an answer that arrives in pieces and resets the client after its
// ReadyForQuery.
func TestLoseReplyAcrossSplitReads(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := faultnet.Start(t, ln.Addr().String())
	p.OnQuery(faultnet.SQLHasPrefix("select 1"), faultnet.LoseReply)
	served := fakeServer(t, ln)

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if _, err := c.Write(startupPacket()); err != nil {
		t.Fatal(err)
	}
	if err := readUntilReady(br); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(selectOne); err != nil {
		t.Fatal(err)
	}
	_, err = br.ReadByte()
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("the client read %v, want a connection reset", err)
	}
	if err := <-served; !errors.Is(err, io.EOF) {
		t.Errorf("fake server ended with %v, want EOF: the proxy closes the server's side normally", err)
	}
}

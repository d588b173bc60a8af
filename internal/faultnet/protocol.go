package faultnet

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
)

// Codes of the packets a client may send before, or instead of, a startup message. They take the place of the
// protocol version in an untyped packet.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// Limits that tell framing from garbage: PostgreSQL itself refuses a startup packet over 10000 bytes, and no
// message may exceed 1 GB.
const (
	maxStartupLen = 10000
	maxMessageLen = 1 << 30
)

// errFraming reports bytes that do not parse as the protocol; the link then forwards them without parsing.
var errFraming = errors.New("faultnet: not PostgreSQL protocol framing")

// peekSize returns the type byte (0 for an untyped packet) and the full size, header included, of the message
// at the head of br, reading as much as the header needs.
func peekSize(br *bufio.Reader, untyped bool) (typ byte, size int, err error) {
	if untyped {
		h, err := br.Peek(4)
		if err != nil {
			return 0, 0, err
		}
		n := int(binary.BigEndian.Uint32(h))
		if n < 8 || n > maxStartupLen {
			return 0, 0, errFraming
		}
		return 0, n, nil
	}
	h, err := br.Peek(5)
	if err != nil {
		return 0, 0, err
	}
	n := int64(binary.BigEndian.Uint32(h[1:]))
	if n < 4 || n > maxMessageLen {
		return 0, 0, errFraming
	}
	return h[0], 1 + int(n), nil
}

// appendMessage reads the size bytes of the message at the head of br onto dst.
func appendMessage(dst []byte, br *bufio.Reader, size int) ([]byte, error) {
	start := len(dst)
	if cap(dst)-start < size {
		grown := make([]byte, start, start+size+4096)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:start+size]
	_, err := io.ReadFull(br, dst[start:])
	return dst, err
}

// appendBuffered moves everything br holds onto dst.
func appendBuffered(dst []byte, br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	dst = append(dst, b...)
	_, _ = br.Discard(len(b))
	return dst
}

// packetCode returns the code of an untyped packet: the protocol version of a startup message, or one of the
// request codes.
func packetCode(msg []byte) uint32 { return binary.BigEndian.Uint32(msg[4:8]) }

// querySQL returns the statement text of a simple Query ('Q') or Parse ('P') message, whole message given.
func querySQL(msg []byte) (string, bool) {
	body := msg[5:]
	switch msg[0] {
	case 'Q':
	case 'P':
		name := bytes.IndexByte(body, 0) // the prepared statement's name comes first
		if name < 0 {
			return "", false
		}
		body = body[name+1:]
	default:
		return "", false
	}
	end := bytes.IndexByte(body, 0)
	if end < 0 {
		return "", false
	}
	return string(body[:end]), true
}

// authRequestsAnswer reports whether an Authentication message ('R'), whole message given, asks the client
// for something (a password, a SASL step) rather than announcing success.
func authRequestsAnswer(msg []byte) bool {
	return len(msg) >= 9 && binary.BigEndian.Uint32(msg[5:9]) != 0
}

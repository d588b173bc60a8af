// Package faultnet is an in-process TCP proxy for the PostgreSQL wire protocol, for tests that need the
// network between a client and the server to misbehave, and for benchmarks that count or lengthen round trips.
//
// A [Proxy] listens on a loopback port and forwards every connection it accepts to one target address. It
// parses message framing only (a type byte and a length; the startup, SSLRequest, GSSENCRequest and
// CancelRequest packets have no type byte) and forwards the bytes unchanged, in order, with backpressure: a
// side that stops reading eventually stops the other side's writes, as over a real network. Once TLS or GSS
// encryption is negotiated the bytes are forwarded without parsing.
//
//	p, dsn := faultnet.ForDSN(t, db.DSN) // closed when t ends
//	pool := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t)
//
// # Latency
//
// [Proxy.SetLatency] delays each direction by a fixed time, per flight: the bytes that arrive together are
// delivered together, the delay after they arrived, and never ahead of earlier bytes. Go timers are coarse
// (up to a millisecond late, more on a loaded virtual machine), so the proxy sleeps in the kernel until
// shortly before the deadline and yields in a loop for the rest: sub-millisecond delays are met to within
// tens of microseconds on an idle machine, at the cost of some CPU while a delayed flight is pending.
//
// # Faults
//
// [Proxy.ResetAll] resets every connection (an RST to both sides), [Proxy.Hang] stops bytes flowing while the
// sockets stay open, [Proxy.Resume] lets them flow again, and [Proxy.RefuseNew] resets new connections as soon
// as they are accepted. [Proxy.OnQuery] ties a fault to one statement: the statement of a simple Query or a
// Parse message is matched, and the [Action] decides what happens to it:
//
//	p.OnQuery(faultnet.IsCommit, faultnet.LoseReply) // COMMIT runs, its answer never comes back
//
// # Round trips
//
// [Proxy.Stats] counts the client's flights: a flight starts whenever the client sends after the server has
// handed it the turn (ReadyForQuery, an authentication request, CopyInResponse, or the one-byte answer to
// SSLRequest) since the client's previous send. Messages a client pipelines (Parse, Bind, Execute … Sync, a
// batch) are one flight, so the count is the number of network round trips the client waited for.
package faultnet

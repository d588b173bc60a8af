package pgcc

import "fmt"

// ConnectionLostError reports a transaction that certainly did not commit because its connection failed, or
// could not be made, before COMMIT was sent (a terminated backend, a reset, a server restarting), and that was
// not run again: the handle was a single connection, which cannot be replaced (SingleConnection), or every
// allowed attempt failed this way (it is then the Err of a [*RetriesExhaustedError]). errors.Is(err,
// ErrConnectionLost) holds, and errors.As reaches the connection's error (a *pgconn.PgError such as 57P01, a
// *pgconn.ConnectError, an I/O error).
type ConnectionLostError struct {
	// Attempts is the number of attempts made, this one included.
	Attempts int
	// SingleConnection is set when the handle was one connection (a *pgx.Conn or *pgxpool.Conn) that pgcc
	// could not replace; open a new one, or pass a pool, to try again.
	SingleConnection bool
	// Err is the connection's error.
	Err error
}

// Error implements error.
func (e *ConnectionLostError) Error() string {
	if e.SingleConnection {
		return fmt.Sprintf("pgcc: connection lost before commit at attempt %d (nothing was committed; the handle is a single connection, which cannot be replaced): %v", e.Attempts, e.Err)
	}
	return fmt.Sprintf("pgcc: connection lost before commit at attempt %d (nothing was committed): %v", e.Attempts, e.Err)
}

// Unwrap returns the connection's error.
func (e *ConnectionLostError) Unwrap() error { return e.Err }

// Is matches [ErrConnectionLost].
func (e *ConnectionLostError) Is(target error) bool { return target == ErrConnectionLost }

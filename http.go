package pgcc

import (
	"context"
	"errors"
)

// The status codes HTTPStatus returns, as net/http names them; spelt out here so that importing pgcc does not
// import net/http.
const (
	statusOK                   = 200
	statusBadRequest           = 400
	statusNotFound             = 404
	statusConflict             = 409
	statusPreconditionFailed   = 412
	statusLocked               = 423
	statusPreconditionRequired = 428
	statusInternalServerError  = 500
	statusServiceUnavailable   = 503
	statusGatewayTimeout       = 504
)

// ErrPreconditionRequired reports a conditional write asked for without its condition: an HTTP request that
// must name the version it read (an If-Match header with the row's ETag) and names none. Nothing was sent.
// errors.Is(err, ErrInvalidArgument) holds too, and [HTTPStatus] answers 428 Precondition Required.
var ErrPreconditionRequired error = preconditionRequired{}

type preconditionRequired struct{}

func (preconditionRequired) Error() string { return "pgcc: precondition required" }

// Is matches [ErrInvalidArgument]: a missing precondition is a missing argument.
func (preconditionRequired) Is(target error) bool { return target == ErrInvalidArgument }

// HTTPStatus returns the HTTP status code that tells a client what err means, for handlers that answer with
// pgcc's errors; 200 for nil. The mapping follows RFC 9110 and RFC 6585:
//
//   - 428 Precondition Required: [ErrPreconditionRequired] (a write without If-Match).
//   - 400 Bad Request: [ErrInvalidArgument] (an unparsable ETag, a key of the wrong type: nothing was sent).
//     When the argument came from your own code rather than from the request, it is a bug to log as well.
//   - 504 Gateway Timeout: the context's deadline ended the work (context.DeadlineExceeded); 503 Service
//     Unavailable when it was cancelled (context.Canceled: the client left, or the server is shutting down).
//   - 409 Conflict: a conflict retries could not resolve ([ErrRetriesExhausted]), a lease held by someone else
//     ([ErrHeld]) or lost ([ErrFenced]), a serialization failure or deadlock that reached the handler
//     ([ErrSerialization], [ErrDeadlock]), a failed guard ([ErrGuardFailed]), an operation already applied
//     under the same idempotency key ([ErrAlreadyApplied]).
//   - 412 Precondition Failed: [ErrConflict], the version the client sent (If-Match) is not the row's, or
//     the row was deleted. An API that takes the version in the body rather than in If-Match answers 409
//     instead; test errors.Is(err, ErrConflict) before calling HTTPStatus.
//   - 404 Not Found: [ErrNotFound].
//   - 423 Locked: [ErrLockNotAvailable] (NOWAIT, a lock timeout, a failed try-lock); add Retry-After.
//   - 503 Service Unavailable: [ErrConnectionLost], the transaction certainly did not commit.
//   - 500 Internal Server Error: anything else, [ErrCommitUnknown] included: the write may have happened, so
//     the answer must not invite a blind retry.
//
// The first line that matches wins, in the order above: a [*RetriesExhaustedError] whose last attempt
// conflicted is 409, not 412, and a held lease is 409, not 423.
func HTTPStatus(err error) int {
	switch {
	case err == nil:
		return statusOK
	case errors.Is(err, ErrPreconditionRequired):
		return statusPreconditionRequired
	case errors.Is(err, ErrInvalidArgument):
		return statusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return statusGatewayTimeout
	case errors.Is(err, context.Canceled):
		return statusServiceUnavailable
	case errors.Is(err, ErrRetriesExhausted), errors.Is(err, ErrHeld), errors.Is(err, ErrFenced),
		errors.Is(err, ErrSerialization), errors.Is(err, ErrDeadlock), errors.Is(err, ErrGuardFailed),
		errors.Is(err, ErrAlreadyApplied):
		return statusConflict
	case errors.Is(err, ErrConflict):
		return statusPreconditionFailed
	case errors.Is(err, ErrNotFound):
		return statusNotFound
	case errors.Is(err, ErrLockNotAvailable):
		return statusLocked
	case errors.Is(err, ErrConnectionLost):
		return statusServiceUnavailable
	default:
		return statusInternalServerError
	}
}

package pgcc

import (
	"fmt"
	"time"
)

// AlreadyAppliedError reports that a transaction carrying an idempotency key was not run because a
// transaction with the same key had already committed: the operation the key names has been applied, once.
// errors.Is(err, ErrAlreadyApplied) holds. A caller answering a retried request (HTTP's Idempotency-Key)
// treats it as the earlier request's success.
type AlreadyAppliedError struct {
	// Key is the idempotency key.
	Key string
	// AppliedAt is when the transaction that applied the key began, on the database clock; it committed
	// shortly after. Zero when the key's record was purged between the refusal and the look-up.
	AppliedAt time.Time
}

// Error implements error.
func (e *AlreadyAppliedError) Error() string {
	if e.AppliedAt.IsZero() {
		return fmt.Sprintf("pgcc: idempotency key %s already applied", FormatValue(e.Key))
	}
	return fmt.Sprintf("pgcc: idempotency key %s already applied by a transaction begun at %s", FormatValue(e.Key), e.AppliedAt.UTC().Format(time.RFC3339Nano))
}

// Is matches [ErrAlreadyApplied].
func (e *AlreadyAppliedError) Is(target error) bool { return target == ErrAlreadyApplied }

package repo

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

var (
	// ErrConflict reports that a compare-and-swap write found the row at another version than the one the
	// caller read, or found it deleted. errors.Is(err, ErrConflict) is true for a [*ConflictError] and a
	// [*BulkConflictError].
	ErrConflict = errors.New("pgcc: version conflict")

	// ErrNotFound reports that no row has the key asked for. errors.Is(err, ErrNotFound) is true for a
	// [*NotFoundError].
	ErrNotFound = errors.New("pgcc: row not found")

	// ErrNoVersion reports a write of a row whose version field is zero: a row that was never read from the
	// database (or whose version was lost on the way). The write is refused rather than sent without a version
	// guard, and nothing is sent.
	ErrNoVersion = errors.New("pgcc: row has no version")

	// ErrInvalidOption reports an option or argument that cannot be honoured: a nil row, a key with the wrong
	// number of values, an unknown column, a nil option. Nothing is sent to the database.
	ErrInvalidOption = errors.New("pgcc: invalid repo option or argument")

	// ErrInvalidTable reports, from [NewTable], a table description that cannot work: an empty, too long or
	// NUL-containing name, a struct that is not a struct, or a struct without a field for a key or version
	// column. The message names the culprit.
	ErrInvalidTable = errors.New("pgcc: invalid table description")
)

// Operations named in a [ConflictError]'s Op field.
const (
	// OpUpdate is [Table.Update], [Table.UpdateColumns] and the write of [Table.Modify].
	OpUpdate = "update"
	// OpDelete is [Table.Delete].
	OpDelete = "delete"
	// OpForceIncrement is [Table.ForceIncrement].
	OpForceIncrement = "force increment"
	// OpBulkUpdate is [Table.UpdateAll].
	OpBulkUpdate = "bulk update"
	// OpCheck is the caller's own statement, checked by [Table.Check].
	OpCheck = "write"
)

// ConflictError is returned when a compare-and-swap write changed nothing because the row is no longer at the
// version the caller read. errors.Is(err, ErrConflict) holds.
//
// Actual is the version found by a statement run after the failed write, so it is at least as new as the one
// the write was compared with. Actual equals Expected only in one case: the row was replaced (deleted and
// inserted again at the same version) between the write's snapshot and the follow-up read, and the write was
// not re-run (see [Table.Check]); running the write again may then succeed.
type ConflictError struct {
	// Table is the table, as its quoted SQL name ("accounts", "app"."accounts").
	Table string
	// Op is the write that conflicted: [OpUpdate], [OpDelete], [OpForceIncrement], [OpBulkUpdate] or
	// [OpCheck].
	Op string
	// KeyColumns names the key columns, in the order of Key.
	KeyColumns []string
	// Key is the row's key, in key-column order.
	Key Key
	// Expected is the version the caller's row carried.
	Expected int64
	// Actual is the version in the database when the conflict was examined; 0 when Deleted.
	Actual int64
	// Deleted reports that no row with Key exists any more: the caller's row was deleted by someone else.
	Deleted bool
}

// Error implements error.
func (e *ConflictError) Error() string {
	if e.Deleted {
		return fmt.Sprintf("pgcc: conflict %s %s %s: expected version %d, but the row was deleted",
			gerund(e.Op), e.Table, formatKey(e.KeyColumns, e.Key), e.Expected)
	}
	return fmt.Sprintf("pgcc: conflict %s %s %s: expected version %d, found %d",
		gerund(e.Op), e.Table, formatKey(e.KeyColumns, e.Key), e.Expected, e.Actual)
}

// Is matches [ErrConflict].
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// BulkConflictError is returned by [Table.UpdateAll] when one or more rows conflicted. The whole batch was
// rolled back, so no row of it was written. errors.Is(err, ErrConflict) holds, and errors.As finds the first
// [*ConflictError].
type BulkConflictError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// Rows is the number of rows in the batch.
	Rows int
	// Conflicts has one entry per row that conflicted, in the order of the batch.
	Conflicts []*ConflictError
}

// Error implements error.
func (e *BulkConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pgcc: bulk update of %s rolled back: %d of %d rows conflicted", e.Table, len(e.Conflicts), e.Rows)
	for i, c := range e.Conflicts {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(formatKey(c.KeyColumns, c.Key))
		if c.Deleted {
			fmt.Fprintf(&b, " expected version %d, deleted", c.Expected)
		} else {
			fmt.Fprintf(&b, " expected version %d, found %d", c.Expected, c.Actual)
		}
	}
	return b.String()
}

// Is matches [ErrConflict].
func (e *BulkConflictError) Is(target error) bool { return target == ErrConflict }

// Unwrap returns the individual conflicts.
func (e *BulkConflictError) Unwrap() []error {
	errs := make([]error, len(e.Conflicts))
	for i, c := range e.Conflicts {
		errs[i] = c
	}
	return errs
}

// NotFoundError is returned by [Table.Get] and [Table.Modify] when no row has the key. errors.Is(err,
// ErrNotFound) holds, and so does errors.Is(err, pgx.ErrNoRows), for code written against pgx.
type NotFoundError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// KeyColumns names the key columns, in the order of Key.
	KeyColumns []string
	// Key is the key looked for.
	Key Key
}

// Error implements error.
func (e *NotFoundError) Error() string {
	return fmt.Sprintf("pgcc: %s %s not found", e.Table, formatKey(e.KeyColumns, e.Key))
}

// Is matches [ErrNotFound].
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// Unwrap returns pgx.ErrNoRows.
func (e *NotFoundError) Unwrap() error { return pgx.ErrNoRows }

func gerund(op string) string {
	switch op {
	case OpUpdate:
		return "updating"
	case OpDelete:
		return "deleting"
	case OpForceIncrement:
		return "incrementing the version of"
	case OpBulkUpdate:
		return "bulk updating"
	default:
		return "writing"
	}
}

// formatKey renders a key as id=42 or tenant="acme" id=7. Strings are quoted so that a key with spaces or
// an equals sign reads unambiguously.
func formatKey(cols []string, key Key) string {
	var b strings.Builder
	for i, v := range key {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i < len(cols) {
			b.WriteString(cols[i])
		} else {
			fmt.Fprintf(&b, "key%d", i+1)
		}
		b.WriteByte('=')
		switch v := v.(type) {
		case string:
			fmt.Fprintf(&b, "%q", v)
		case []byte:
			fmt.Fprintf(&b, "%x", v)
		default:
			fmt.Fprintf(&b, "%v", v)
		}
	}
	return b.String()
}

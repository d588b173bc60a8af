package repo

import (
	"fmt"
	"strings"

	"github.com/pgcc/pgcc"
)

// BulkConflictError is returned by [Table.UpdateAll] when one or more rows conflicted. The whole batch was
// rolled back, so no row of it was written. errors.Is(err, pgcc.ErrConflict) holds, and errors.As finds the first
// [*pgcc.ConflictError].
type BulkConflictError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// Rows is the number of rows in the batch.
	Rows int
	// Conflicts has one entry per row that conflicted, in the order of the batch.
	Conflicts []*pgcc.ConflictError
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
		b.WriteString(pgcc.FormatKey(c.KeyColumns, c.Key))
		expected, actual := fmt.Sprint(c.Expected), fmt.Sprint(c.Actual)
		if !c.ExpectedTime.IsZero() || !c.ActualTime.IsZero() {
			expected, actual = pgcc.FormatValue(c.ExpectedTime), pgcc.FormatValue(c.ActualTime)
		}
		if c.Deleted {
			fmt.Fprintf(&b, " expected version %s, deleted", expected)
		} else {
			fmt.Fprintf(&b, " expected version %s, found %s", expected, actual)
		}
	}
	return b.String()
}

// Is matches [pgcc.ErrConflict].
func (e *BulkConflictError) Is(target error) bool { return target == pgcc.ErrConflict }

// Unwrap returns the individual conflicts.
func (e *BulkConflictError) Unwrap() []error {
	errs := make([]error, len(e.Conflicts))
	for i, c := range e.Conflicts {
		errs[i] = c
	}
	return errs
}

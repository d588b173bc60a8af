package repo

import (
	"fmt"
	"math"
	"reflect"
	"slices"

	"github.com/pgcc/pgcc"
)

// This file checks arguments before anything is sent: handles, keys, rows. Every refusal matches
// pgcc.ErrInvalidArgument and names the argument.

// isNil reports whether v is nil or an interface holding a nil pointer, map, slice, function or channel: a
// (*pgxpool.Pool)(nil) passed as a pgcc.DBTX is not == nil, and would panic at its first method call.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface, reflect.UnsafePointer:
		return rv.IsNil()
	}
	return false
}

// errNilTable is the error of every method called on a nil *Table.
func errNilTable(op string) error {
	return fmt.Errorf("%w: %s on a nil *repo.Table (NewTable returned an error that was not checked?)", pgcc.ErrInvalidArgument, op)
}

// check refuses a nil table (t, the receiver) or database handle for the method op.
func (t *Table[T]) check(op string, db pgcc.DBTX) error {
	if t == nil {
		return errNilTable(op)
	}
	if isNil(db) {
		if db == nil {
			return fmt.Errorf("%w: %s of %s: the database handle is nil", pgcc.ErrInvalidArgument, op, t.quoted)
		}
		return fmt.Errorf("%w: %s of %s: the database handle is a nil %T", pgcc.ErrInvalidArgument, op, t.quoted, db)
	}
	return nil
}

// checkRow refuses a nil table, handle or row for the method op.
func (t *Table[T]) checkRow(op string, db pgcc.DBTX, row *T) error {
	if err := t.check(op, db); err != nil {
		return err
	}
	if row == nil {
		return fmt.Errorf("%w: %s of %s: the row is nil", pgcc.ErrInvalidArgument, op, t.quoted)
	}
	return nil
}

// checkKey refuses a key of the wrong length, or with a value that the key column's field could not hold
// without loss: a value must convert to the field's type exactly, so that no key can silently name another
// row (pgx would truncate the float64 3.9 to the bigint 3).
//
// The rules, by the kind of the field's type: an integer field takes integers in its range and floats with an
// integral value in it; a float field takes floats it represents exactly and integers it represents exactly;
// a string field takes strings only (not numbers, not []byte); a bool field takes bools. Values of a named
// type are judged by their kind (an AccountID int64 for an int64 field is fine). Fields of other types
// (time.Time, a UUID type, []byte) take any non-nil value, which pgx and the server check. A nil value, or a
// nil pointer, is refused: no row has a NULL key.
func (t *Table[T]) checkKey(op string, key pgcc.Key) error {
	if len(key) != len(t.d.key) {
		return fmt.Errorf("%w: %s of %s: the table has %d key column(s) (%s), the key has %d value(s)", pgcc.ErrInvalidArgument, op, t.quoted, len(t.keyCols), quotedList(t.keyCols), len(key))
	}
	for i, v := range key {
		f := t.fields[t.d.key[i]]
		if problem := keyValueProblem(v, f.typ); problem != "" {
			return fmt.Errorf("%w: %s of %s: key value %s (%T) for column %q %s (its field is %v)", pgcc.ErrInvalidArgument, op, t.quoted, pgcc.FormatValue(v), v, t.keyCols[i], problem, f.typ)
		}
	}
	return nil
}

func quotedList(names []string) string {
	var s string
	for i, n := range names {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", n)
	}
	return s
}

// keyValueProblem says why v cannot stand for a value of a field of type typ, or "" when it can.
func keyValueProblem(v any, typ reflect.Type) string {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			break
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() || rv.Kind() == reflect.Pointer {
		return "is NULL, and no row has a NULL key"
	}
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch typ.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		lo, hi := int64(math.MinInt64)>>(64-typ.Bits()), int64(math.MaxInt64)>>(64-typ.Bits())
		switch {
		case rv.CanInt():
			if n := rv.Int(); n < lo || n > hi {
				return fmt.Sprintf("is out of range for %d-bit integers", typ.Bits())
			}
		case rv.CanUint():
			if rv.Uint() > uint64(hi) {
				return fmt.Sprintf("is out of range for %d-bit integers", typ.Bits())
			}
		case rv.CanFloat():
			f := rv.Float()
			if f != math.Trunc(f) || math.IsInf(f, 0) {
				return "is not an integer, and would be truncated"
			}
			// float64(hi) rounds up to 2^(bits-1), itself out of range.
			if f < float64(lo) || f >= -float64(lo) {
				return fmt.Sprintf("is out of range for %d-bit integers", typ.Bits())
			}
		default:
			return "is not a number"
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		hi := uint64(math.MaxUint64) >> (64 - typ.Bits())
		switch {
		case rv.CanInt():
			if n := rv.Int(); n < 0 || uint64(n) > hi {
				return fmt.Sprintf("is out of range for unsigned %d-bit integers", typ.Bits())
			}
		case rv.CanUint():
			if rv.Uint() > hi {
				return fmt.Sprintf("is out of range for unsigned %d-bit integers", typ.Bits())
			}
		case rv.CanFloat():
			f := rv.Float()
			if f != math.Trunc(f) || math.IsInf(f, 0) {
				return "is not an integer, and would be truncated"
			}
			if f < 0 || f >= math.Ldexp(1, typ.Bits()) {
				return fmt.Sprintf("is out of range for unsigned %d-bit integers", typ.Bits())
			}
		default:
			return "is not a number"
		}
	case reflect.Float32, reflect.Float64:
		exact := 53
		if typ.Kind() == reflect.Float32 {
			exact = 24
		}
		switch {
		case rv.CanInt():
			if n := rv.Int(); n > 1<<exact || n < -(1<<exact) {
				return "cannot be represented exactly as a float"
			}
		case rv.CanUint():
			if rv.Uint() > 1<<exact {
				return "cannot be represented exactly as a float"
			}
		case rv.CanFloat():
			f := rv.Float()
			if typ.Kind() == reflect.Float32 && !math.IsNaN(f) && float64(float32(f)) != f {
				return "cannot be represented exactly as a float32"
			}
		default:
			return "is not a number"
		}
	case reflect.String:
		if rv.Kind() != reflect.String {
			return "is not a string"
		}
	case reflect.Bool:
		if rv.Kind() != reflect.Bool {
			return "is not a bool"
		}
	}
	return ""
}

// checkTracked refuses a write of v (a T embedding Tracked) whose key differs from the one it was read with.
func (t *Table[T]) checkTracked(op string, v reflect.Value) error {
	if t.tracked == nil {
		return nil
	}
	read := v.FieldByIndex(t.tracked).Addr().Interface().(*Tracked).key
	if read == nil {
		return nil
	}
	now := t.keyValues(v)
	if slices.EqualFunc(read, now, sameValue) {
		return nil
	}
	return fmt.Errorf("%w: %s of %s: the row's key changed from %s to %s since it was read; a write never moves a row to another key (insert the new row and delete the old one)",
		pgcc.ErrInvalidArgument, op, t.quoted, pgcc.FormatKey(t.keyCols, read), pgcc.FormatKey(t.keyCols, now))
}

// track records key in v's Tracked, when T embeds one.
func (t *Table[T]) track(v reflect.Value) {
	if t.tracked != nil {
		v.FieldByIndex(t.tracked).Addr().Interface().(*Tracked).key = t.keyValues(v)
	}
}

// sameValue compares two key values of the same field: with == when their type allows, else deeply ([]byte).
func sameValue(a, b any) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) {
		return false
	}
	if reflect.TypeOf(a).Comparable() {
		return a == b
	}
	return reflect.DeepEqual(a, b)
}

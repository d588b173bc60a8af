package lockwait

import (
	"fmt"
	"reflect"
	"strconv"
	"unicode/utf8"

	"github.com/pgcc/pgcc"
)

// MaxIdentifierBytes is the longest identifier PostgreSQL keeps: it truncates longer ones to this length
// (NAMEDATALEN - 1), so two longer names can name one object.
const MaxIdentifierBytes = 63

// CheckName refuses a name PostgreSQL would not keep as given: empty, longer than 63 bytes, not valid UTF-8,
// or containing a NUL byte. what names the argument in the error, which matches pgcc.ErrInvalidArgument.
func CheckName(what, name string) error {
	var problem string
	switch {
	case name == "":
		problem = "is empty"
	case len(name) > MaxIdentifierBytes:
		problem = "is longer than 63 bytes (PostgreSQL would truncate it, and two such names can name one table)"
	case !utf8.ValidString(name):
		problem = "is not valid UTF-8"
	default:
		for i := 0; i < len(name); i++ {
			if name[i] == 0 {
				problem = "contains a NUL byte"
				break
			}
		}
	}
	if problem == "" {
		return nil
	}
	return fmt.Errorf("%w: %s %s %s", pgcc.ErrInvalidArgument, what, strconv.Quote(name), problem)
}

// IsNil reports whether v is nil or holds a nil pointer, map, slice, channel or function: a typed nil in an
// interface, on which a method call would panic. The common case, a nil interface, costs no reflection.
func IsNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface, reflect.UnsafePointer:
		return rv.IsNil()
	}
	return false
}

// SameHandle reports whether a and b are the same handle (false for handles that cannot be compared).
func SameHandle(a, b pgcc.DBTX) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb || ta == nil || !ta.Comparable() {
		return false
	}
	return a == b
}

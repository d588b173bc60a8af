package lockwait

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// KeySet is a checked list of keys of one table, ready to be sent: one key as one scalar parameter per key
// column, several as one typed array per key column, so that any number of keys of any number of columns
// is one statement with a fixed number of parameters, which every pgx query exec mode can send (a []any
// cannot be encoded when the parameter's type is not described, as under QueryExecModeExec and
// QueryExecModeSimpleProtocol).
type KeySet struct {
	ident   string
	keyCols []string
	keys    []pgcc.Key
	args    []any
}

// NewKeySet checks keys against the key columns keyCols of the table quoted as ident and converts their
// values. floatOK[i], when given, allows floating-point values for key column i (a float column); otherwise
// a float must be integral and is sent as an integer, because pgx would truncate 3.9 to 3 for an integer
// column. Every refusal matches pgcc.ErrInvalidArgument and names the key.
func NewKeySet(ident string, keyCols []string, keys []pgcc.Key, floatOK []bool) (KeySet, error) {
	ks := KeySet{ident: ident, keyCols: keyCols, keys: keys}
	for i, k := range keys {
		if len(k) != len(keyCols) {
			return ks, fmt.Errorf("%w: keys[%d] %s has %d values, table %s has %d key columns",
				pgcc.ErrInvalidArgument, i, k, len(k), ident, len(keyCols))
		}
	}
	switch len(keys) {
	case 0:
		return ks, nil
	case 1:
		ks.args = make([]any, len(keyCols))
		for j, v := range keys[0] {
			nv, _, err := keyValue(v, allowFloat(floatOK, j))
			if err != nil {
				return ks, fmt.Errorf("%w: keys[0][%d] (column %q) %s: %v", pgcc.ErrInvalidArgument, j, keyCols[j], pgcc.FormatValue(v), err)
			}
			ks.args[j] = nv
		}
		return ks, nil
	}
	ks.args = make([]any, len(keyCols))
	for j := range keyCols {
		arr, err := column(keys, j, allowFloat(floatOK, j))
		if err != nil {
			return ks, fmt.Errorf("%w: %v (key column %q of %s)", pgcc.ErrInvalidArgument, err, keyCols[j], ident)
		}
		ks.args[j] = arr
	}
	return ks, nil
}

func allowFloat(floatOK []bool, j int) bool { return j < len(floatOK) && floatOK[j] }

// Keys returns the keys, as given.
func (ks KeySet) Keys() []pgcc.Key { return ks.keys }

// Len is the number of keys.
func (ks KeySet) Len() int { return len(ks.keys) }

// Ordinal reports whether [KeySet.WriteSelect] puts the 1-based position of the matching key (a bigint)
// before the columns: true for more than one key.
func (ks KeySet) Ordinal() bool { return len(ks.keys) > 1 }

// WriteSelect writes a SELECT of cols (qualified with the alias t) from the table, aliased t, restricted to
// the keys, numbering parameters from first, and returns the arguments. One key is matched with
// t.k = $n per key column; several are joined with
//
//	unnest(COALESCE($n, ARRAY[(NULL::<table>).<k>]), …) WITH ORDINALITY AS k(…, ord)
//
// whose COALESCE gives each array the type of its key column whatever the exec mode, and whose ordinality,
// selected first, tells which key a row matched. A key asked twice matches its row twice.
func (ks KeySet) WriteSelect(b *strings.Builder, cols []string, first int) []any {
	b.WriteString("SELECT ")
	if ks.Ordinal() {
		b.WriteString("k.ord")
		if len(cols) > 0 {
			b.WriteString(", ")
		}
	}
	WriteQualified(b, "t", cols)
	b.WriteString(" FROM ")
	b.WriteString(ks.ident)
	b.WriteString(" t")
	if !ks.Ordinal() {
		b.WriteString(" WHERE ")
		for j, c := range ks.keyCols {
			if j > 0 {
				b.WriteString(" AND ")
			}
			b.WriteString("t.")
			b.WriteString(pgx.Identifier{c}.Sanitize())
			b.WriteString(" = $")
			b.WriteString(strconv.Itoa(first + j))
		}
		return ks.args
	}
	b.WriteString(" JOIN unnest(")
	for j, c := range ks.keyCols {
		if j > 0 {
			b.WriteString(", ")
		}
		b.WriteString("COALESCE($")
		b.WriteString(strconv.Itoa(first + j))
		b.WriteString(", ARRAY[(NULL::")
		b.WriteString(ks.ident)
		b.WriteString(").")
		b.WriteString(pgx.Identifier{c}.Sanitize())
		b.WriteString("])")
	}
	b.WriteString(") WITH ORDINALITY AS k(")
	for j := range ks.keyCols {
		b.WriteString("k")
		b.WriteString(strconv.Itoa(j + 1))
		b.WriteString(", ")
	}
	b.WriteString("ord) ON ")
	for j, c := range ks.keyCols {
		if j > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString("t.")
		b.WriteString(pgx.Identifier{c}.Sanitize())
		b.WriteString(" = k.k")
		b.WriteString(strconv.Itoa(j + 1))
	}
	return ks.args
}

// WriteColumns writes cols quoted and separated by commas.
func WriteColumns(b *strings.Builder, cols []string) {
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgx.Identifier{c}.Sanitize())
	}
}

// WriteQualified writes cols quoted, each qualified with alias, separated by commas.
func WriteQualified(b *strings.Builder, alias string, cols []string) {
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(alias)
		b.WriteByte('.')
		b.WriteString(pgx.Identifier{c}.Sanitize())
	}
}

// keyValue converts one key value for sending: every integer type becomes int64 (uint64 past its range is
// refused), an integral float becomes int64 unless floats are allowed, a non-integral one is refused; NULL is
// refused. It also returns the value's class, which all values of one column must share.
func keyValue(v any, floatOK bool) (any, reflect.Type, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil, fmt.Errorf("a key value cannot be NULL")
	case int:
		return int64(x), int64Type, nil
	case int8:
		return int64(x), int64Type, nil
	case int16:
		return int64(x), int64Type, nil
	case int32:
		return int64(x), int64Type, nil
	case int64:
		return x, int64Type, nil
	case uint:
		return uintValue(uint64(x))
	case uint8:
		return int64(x), int64Type, nil
	case uint16:
		return int64(x), int64Type, nil
	case uint32:
		return int64(x), int64Type, nil
	case uint64:
		return uintValue(x)
	case float32:
		return floatValue(float64(x), floatOK, float32Type, v)
	case float64:
		return floatValue(x, floatOK, float64Type, v)
	case string:
		return x, stringType, nil
	case bool:
		return x, boolType, nil
	case []byte:
		return x, bytesType, nil
	case time.Time:
		return x, timeType, nil
	}
	return v, reflect.TypeOf(v), nil
}

var (
	int64Type   = reflect.TypeFor[int64]()
	float32Type = reflect.TypeFor[float32]()
	float64Type = reflect.TypeFor[float64]()
	stringType  = reflect.TypeFor[string]()
	boolType    = reflect.TypeFor[bool]()
	bytesType   = reflect.TypeFor[[]byte]()
	timeType    = reflect.TypeFor[time.Time]()
)

func uintValue(u uint64) (any, reflect.Type, error) {
	if u > math.MaxInt64 {
		return nil, nil, fmt.Errorf("%d is out of the range of bigint", u)
	}
	return int64(u), int64Type, nil
}

func floatValue(f float64, floatOK bool, typ reflect.Type, v any) (any, reflect.Type, error) {
	if floatOK {
		return v, typ, nil
	}
	if f != math.Trunc(f) || math.IsInf(f, 0) || f < math.MinInt64 || f >= math.MaxInt64 {
		return nil, nil, fmt.Errorf("a floating-point key value must be an integer (pgx would truncate it for an integer column; for a floating-point key column describe the table with lock.NewTable and a float field, or pass a pgtype.Float8)")
	}
	return int64(f), int64Type, nil
}

// column returns column j of keys as a typed slice: []int64, []string, []bool, [][]byte, []time.Time,
// []float64 (floats allowed), or a slice of the values' own type when they all share one.
func column(keys []pgcc.Key, j int, floatOK bool) (any, error) {
	first, class, err := keyValue(keys[0][j], floatOK)
	if err != nil {
		return nil, fmt.Errorf("keys[0][%d] %s: %v", j, pgcc.FormatValue(keys[0][j]), err)
	}
	if class == float32Type {
		class = float64Type
	}
	if floatOK && class == int64Type {
		// A float column keyed by integers and floats alike: send floats.
		for _, k := range keys {
			switch k[j].(type) {
			case float32, float64:
				class = float64Type
			}
		}
	}
	switch class {
	case int64Type:
		return typed[int64](keys, j, floatOK, first)
	case float64Type:
		out := make([]float64, len(keys))
		for i, k := range keys {
			switch x := k[j].(type) {
			case float64:
				out[i] = x
			case float32:
				out[i] = float64(x)
			default:
				v, c, err := keyValue(x, floatOK)
				if err != nil || c != int64Type {
					return nil, mixed(keys, i, j, err)
				}
				out[i] = float64(v.(int64))
			}
		}
		return out, nil
	case stringType:
		return typed[string](keys, j, floatOK, first)
	case boolType:
		return typed[bool](keys, j, floatOK, first)
	case bytesType:
		return typed[[]byte](keys, j, floatOK, first)
	case timeType:
		return typed[time.Time](keys, j, floatOK, first)
	}
	out := reflect.MakeSlice(reflect.SliceOf(class), len(keys), len(keys))
	for i, k := range keys {
		if k[j] == nil || reflect.TypeOf(k[j]) != class {
			return nil, mixed(keys, i, j, nil)
		}
		out.Index(i).Set(reflect.ValueOf(k[j]))
	}
	return out.Interface(), nil
}

// typed collects column j of keys as a []E, converting each value with keyValue.
func typed[E any](keys []pgcc.Key, j int, floatOK bool, first any) (any, error) {
	out := make([]E, len(keys))
	out[0] = first.(E)
	for i := 1; i < len(keys); i++ {
		v, _, err := keyValue(keys[i][j], floatOK)
		e, ok := v.(E)
		if err != nil || !ok {
			return nil, mixed(keys, i, j, err)
		}
		out[i] = e
	}
	return out, nil
}

func mixed(keys []pgcc.Key, i, j int, err error) error {
	if err != nil {
		return fmt.Errorf("keys[%d][%d] %s: %v", i, j, pgcc.FormatValue(keys[i][j]), err)
	}
	return fmt.Errorf("keys[%d][%d] %s is a %T, but keys[0][%d] is a %T: the values of one key column must be of one kind",
		i, j, pgcc.FormatValue(keys[i][j]), keys[i][j], j, keys[0][j])
}

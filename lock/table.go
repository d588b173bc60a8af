package lock

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// Table describes a table whose rows can be locked by key. A *repo.Table[T] satisfies it, and so does a
// [*TableDef] from [NewTable]; any small type returning constants does too.
//
// Every call checks the description before sending anything: a name must be non-empty, valid UTF-8, free of
// NUL bytes and at most 63 bytes long (PostgreSQL truncates longer identifiers, so two such names can be one
// table), the table name has one to three parts (schema-qualified or not), and the key columns are at least
// one and distinct. The key columns must identify at most one row (a primary key or a unique constraint).
type Table interface {
	// Identifier is the table's name, schema-qualified or not.
	Identifier() pgx.Identifier
	// KeyColumns are the columns rows are locked by, usually the primary key.
	KeyColumns() []string
	// SelectColumns are the columns [Load], [Select] and [Claim] read, named like the fields of the row struct.
	SelectColumns() []string
}

// TableOf is a [Table] whose rows are T values: what [Load], [Select] and [Claim] take, so that T is inferred
// from the table and lock.Load(ctx, tx, accounts, keys) needs no type argument. *repo.Table[T] and
// [*TableDef][T] satisfy it.
type TableOf[T any] interface {
	Table
	// KeyOf returns row's key, in the order of KeyColumns.
	KeyOf(row *T) pgcc.Key
}

// TableDef is a typed description of a table whose rows map to T, for tables that package repo cannot
// describe: a work queue without a version column, a table only ever locked, never compare-and-swapped. It is
// immutable and safe for concurrent use.
type TableDef[T any] struct {
	ident   pgx.Identifier
	keyCols []string
	cols    []string
	keyIdx  [][]int // field index of each key column
	floats  []bool  // whether each key field is a floating-point number
}

var (
	_ TableOf[struct{ ID int }] = (*TableDef[struct{ ID int }])(nil)
)

// TableOption configures [NewTable].
type TableOption func(*tableConfig)

type tableConfig struct {
	schema    string
	schemaSet bool
	key       []string
	keySet    bool
	invalid   []string
}

// InSchema qualifies the table name with schema; without it the name resolves through search_path.
func InSchema(schema string) TableOption {
	return func(c *tableConfig) {
		if c.schemaSet && c.schema != schema {
			c.invalid = append(c.invalid, "InSchema given twice")
		}
		c.schema, c.schemaSet = schema, true
	}
}

// WithKey names the key columns, in key order; the default is "id".
func WithKey(cols ...string) TableOption {
	return func(c *tableConfig) {
		if c.keySet {
			c.invalid = append(c.invalid, "WithKey given twice")
		}
		if len(cols) == 0 {
			c.invalid = append(c.invalid, "WithKey needs at least one column")
		}
		c.key, c.keySet = cols, true
	}
}

// NewTable describes the table name whose rows map to the struct T, as pgx.RowToStructByName maps them: an
// exported field is the column named by its `db` tag, or, untagged, by its name in lower case; a field
// tagged `db:"-"` is skipped, and an embedded struct contributes its fields. Tag a field whose column name has
// underscores or capitals.
//
// NewTable checks everything it can without a database: names as [Table] says, T a struct with a field for
// each key column. A problem is an error matching [pgcc.ErrInvalidArgument] that names the table. A key field
// of type float32 or float64 makes the key column a floating-point one, for which key values may be
// non-integral floats (for other tables lock refuses them: pgx would truncate 3.9 to 3 for an integer column).
func NewTable[T any](name string, opts ...TableOption) (*TableDef[T], error) {
	cfg := tableConfig{key: []string{"id"}}
	for i, o := range opts {
		if o == nil {
			cfg.invalid = append(cfg.invalid, fmt.Sprintf("option %d is nil", i))
			continue
		}
		o(&cfg)
	}
	if len(cfg.invalid) > 0 {
		return nil, fmt.Errorf("%w: table %q: %s", pgcc.ErrInvalidArgument, name, strings.Join(cfg.invalid, "; "))
	}
	typ := reflect.TypeFor[T]()
	if typ.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: table %q: rows must be a struct type, not %v", pgcc.ErrInvalidArgument, name, typ)
	}
	td := &TableDef[T]{ident: pgx.Identifier{name}}
	if cfg.schemaSet {
		td.ident = pgx.Identifier{cfg.schema, name}
	}
	var fields [][]int
	var types []reflect.Type
	mapFields(typ, nil, &td.cols, &fields, &types)
	for _, k := range cfg.key {
		i := indexOf(td.cols, k)
		if i < 0 {
			return nil, fmt.Errorf("%w: table %q: struct %v has no field for key column %q (tag a field `db:%q`)", pgcc.ErrInvalidArgument, name, typ, k, k)
		}
		td.keyCols = append(td.keyCols, k)
		td.keyIdx = append(td.keyIdx, fields[i])
		kind := types[i].Kind()
		td.floats = append(td.floats, kind == reflect.Float32 || kind == reflect.Float64)
	}
	if _, err := describe(td, true); err != nil {
		return nil, err
	}
	return td, nil
}

// mapFields appends T's columns, field indexes and types in struct order, with pgx.RowToStructByName's rules.
func mapFields(typ reflect.Type, prefix []int, cols *[]string, fields *[][]int, types *[]reflect.Type) {
	for i := range typ.NumField() {
		sf := typ.Field(i)
		index := append(append([]int(nil), prefix...), i)
		if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			mapFields(sf.Type, index, cols, fields, types)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		col, tagged := sf.Tag.Lookup("db")
		col, _, _ = strings.Cut(col, ",")
		if col == "-" {
			continue
		}
		if !tagged {
			col = strings.ToLower(sf.Name)
		}
		*cols = append(*cols, col)
		*fields = append(*fields, index)
		*types = append(*types, sf.Type)
	}
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// Identifier returns the table's name, schema-qualified when [InSchema] was given.
func (t *TableDef[T]) Identifier() pgx.Identifier { return append(pgx.Identifier(nil), t.ident...) }

// Name returns the table's quoted, schema-qualified name, as used in SQL and in error messages.
func (t *TableDef[T]) Name() string { return t.ident.Sanitize() }

// KeyColumns returns the key columns' names, in key order.
func (t *TableDef[T]) KeyColumns() []string { return append([]string(nil), t.keyCols...) }

// SelectColumns returns the names of every column T maps, in struct order.
func (t *TableDef[T]) SelectColumns() []string { return append([]string(nil), t.cols...) }

// KeyOf returns row's key, in key order.
func (t *TableDef[T]) KeyOf(row *T) pgcc.Key {
	v := reflect.ValueOf(row).Elem()
	key := make(pgcc.Key, len(t.keyIdx))
	for i, idx := range t.keyIdx {
		key[i] = v.FieldByIndex(idx).Interface()
	}
	return key
}

// floatKeys reports, per key column, whether floating-point key values are allowed.
func (t *TableDef[T]) floatKeys() []bool { return t.floats }

// floatKeyed is implemented by descriptions that know which key columns are floating-point.
type floatKeyed interface{ floatKeys() []bool }

// described is a Table checked once per call: quoted name, key columns, columns to read.
type described struct {
	ident   string
	keyCols []string
	cols    []string
	floatOK []bool
}

// describe checks t as [Table] documents and reads it once; withCols also reads and checks SelectColumns.
// Every refusal matches pgcc.ErrInvalidArgument and names the table, and happens before any method of a nil
// table is called.
func describe(t Table, withCols bool) (described, error) {
	var d described
	if lockwait.IsNil(t) {
		return d, fmt.Errorf("%w: no table (a nil lock.Table)", pgcc.ErrInvalidArgument)
	}
	id := t.Identifier()
	if len(id) == 0 || len(id) > 3 {
		return d, fmt.Errorf("%w: table name %q must have one to three parts", pgcc.ErrInvalidArgument, []string(id))
	}
	for _, part := range id {
		if err := lockwait.CheckName("table name", part); err != nil {
			return d, err
		}
	}
	d.ident = id.Sanitize()
	d.keyCols = t.KeyColumns()
	if len(d.keyCols) == 0 {
		return d, fmt.Errorf("%w: table %s has no key columns", pgcc.ErrInvalidArgument, d.ident)
	}
	if err := checkColumns(d.ident, "key column", d.keyCols); err != nil {
		return d, err
	}
	if withCols {
		d.cols = t.SelectColumns()
		if len(d.cols) == 0 {
			return d, fmt.Errorf("%w: table %s has no columns to read", pgcc.ErrInvalidArgument, d.ident)
		}
		if err := checkColumns(d.ident, "column", d.cols); err != nil {
			return d, err
		}
	}
	if f, ok := t.(floatKeyed); ok {
		d.floatOK = f.floatKeys()
	}
	return d, nil
}

func checkColumns(ident, what string, cols []string) error {
	for i, c := range cols {
		if err := lockwait.CheckName(what+" of "+ident, c); err != nil {
			return err
		}
		for _, prev := range cols[:i] {
			if prev == c {
				return fmt.Errorf("%w: table %s: %s %q given twice", pgcc.ErrInvalidArgument, ident, what, c)
			}
		}
	}
	return nil
}

// checkTx refuses a nil transaction, typed nils included, before any of its methods is called.
func checkTx(tx pgx.Tx) error {
	if lockwait.IsNil(tx) {
		return fmt.Errorf("%w: no transaction (a nil pgx.Tx)", pgcc.ErrInvalidArgument)
	}
	return nil
}

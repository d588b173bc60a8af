package repo

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// VersionKind says what a table's version is and how a write changes it. The kind decides the
// compare-and-swap predicate and the new version in the SQL [NewTable] builds.
type VersionKind int

const (
	// VersionCounter is a bigint column (any integer column works) that Insert sets to 1 and every write
	// increments by one. It is the default, in the column "version" unless [WithVersion] names another.
	VersionCounter VersionKind = iota
	// VersionXmin is PostgreSQL's xmin system column: the id of the transaction that wrote the row version,
	// which changes with every UPDATE, so tables need no column of their own. See [WithXmin].
	VersionXmin
)

// String returns "counter" or "xmin".
func (k VersionKind) String() string {
	switch k {
	case VersionCounter:
		return "counter"
	case VersionXmin:
		return "xmin"
	default:
		return fmt.Sprintf("VersionKind(%d)", int(k))
	}
}

// TableOption configures [NewTable]. Options are applied in order; a later one overrides an earlier one of
// the same kind.
type TableOption func(*tableConfig)

type tableConfig struct {
	schema   string
	key      []string
	version  string
	kind     VersionKind
	defaults []string
	invalid  []string
}

// InSchema qualifies the table with a schema. Without it the table is found through the connection's
// search_path, as an unqualified name in SQL is.
func InSchema(schema string) TableOption {
	return func(c *tableConfig) { c.schema = schema }
}

// WithKey names the key columns, which together identify one row (a primary key or another unique key). The
// default is a single column "id". Key values are passed, and reported in errors, in this order.
func WithKey(cols ...string) TableOption {
	return func(c *tableConfig) {
		if len(cols) == 0 {
			c.invalid = append(c.invalid, "WithKey needs at least one column")
			return
		}
		c.key = append([]string(nil), cols...)
	}
}

// WithVersion names the version column of a [VersionCounter] table; the default is "version".
func WithVersion(col string) TableOption {
	return func(c *tableConfig) {
		c.version = col
		c.kind = VersionCounter
	}
}

// WithXmin uses PostgreSQL's xmin system column as the version ([VersionXmin]), for tables that have no
// version column. T needs a uint32 field for the column "xmin" (tag it `db:"xmin"`): xmin is of type xid, a
// 32-bit transaction id, which pgx.RowToStructByName scans into a uint32 only. Table's own statements read
// it as xmin::text::bigint, and errors carry it as an int64. Caveats, documented in docs/optimistic.md: xmin is a 32-bit
// transaction id, so versions are only compared for equality, never ordered; every write inside one
// transaction leaves the same xmin; and a write changes the version even when it changes no value.
func WithXmin() TableOption {
	return func(c *tableConfig) {
		c.version = "xmin"
		c.kind = VersionXmin
	}
}

// WithInsertDefaults names columns that [Table.Insert] leaves to their DEFAULT (a serial or identity key, a
// created_at timestamp) and reads back into the row with RETURNING. They are still read by Get and written by
// Update like any other column.
func WithInsertDefaults(cols ...string) TableOption {
	return func(c *tableConfig) { c.defaults = append(c.defaults, cols...) }
}

// field is where a column lives in T.
type field struct {
	index []int
	typ   reflect.Type
}

// Table is a typed description of a table whose rows map to T, with its key and version, and the SQL to read
// and write them, built once by [NewTable]. Its description never changes after NewTable (only statements
// for new column lists and batch sizes are added to its caches), and it is safe for concurrent use.
type Table[T any] struct {
	d       desc
	sql     statements
	quoted  string   // the table's quoted name, for messages
	keyCols []string // key column names, for errors
	fields  []field  // per column of d.cols
	version field

	partial sync.Map // column list → *partialStmt, for UpdateColumns
	bulk    sync.Map // batch size → bulk UPDATE SQL
	probes  sync.Map // batch size → bulk probe SQL
}

type partialStmt struct {
	set []int
	sql string
}

// NewTable describes the table name whose rows map to the struct T, as pgx.RowToStructByName maps them: an
// exported field is the column named by its `db` tag, or, untagged, by its name in lower case; a field
// tagged `db:"-"` is skipped, and an embedded struct contributes its fields. Tag a field whose column name
// has underscores or capitals.
//
// NewTable checks everything it can without a database and builds every statement: names must be non-empty,
// valid UTF-8, free of NUL bytes and at most 63 bytes long (any other name works, quoted with
// pgx.Identifier.Sanitize: spaces, quotes, reserved words); T must have a field for each key column and for
// the version column, and the version field must be an integer. A mismatch is an error matching
// [pgcc.ErrInvalidArgument] naming the field; an option that cannot be honoured matches [pgcc.ErrInvalidArgument]. That the
// columns exist in the database is found at the first statement.
func NewTable[T any](name string, opts ...TableOption) (*Table[T], error) {
	cfg := tableConfig{key: []string{"id"}, version: "version"}
	for _, o := range opts {
		if o == nil {
			cfg.invalid = append(cfg.invalid, "nil option")
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
	t := &Table[T]{d: desc{schema: cfg.schema, table: name, kind: cfg.kind}}
	mapFields(typ, nil, &t.d.cols, &t.fields)
	if err := t.d.validate(); err != nil {
		return nil, err
	}
	pos := func(col string) int {
		for i, c := range t.d.cols {
			if c == col {
				return i
			}
		}
		return -1
	}
	for _, k := range cfg.key {
		if err := checkName(name, "key column", k); err != nil {
			return nil, err
		}
		p := pos(k)
		if p < 0 {
			return nil, fmt.Errorf("%w: table %q: struct %v has no field for key column %q (tag a field `db:%q`)", pgcc.ErrInvalidArgument, name, typ, k, k)
		}
		if contains(t.d.key, p) {
			return nil, fmt.Errorf("%w: table %q: key column %q given twice", pgcc.ErrInvalidArgument, name, k)
		}
		t.d.key = append(t.d.key, p)
	}
	if err := checkName(name, "version column", cfg.version); err != nil {
		return nil, err
	}
	t.d.version = pos(cfg.version)
	if t.d.version < 0 {
		return nil, fmt.Errorf("%w: table %q: struct %v has no field for %s version column %q (tag a field `db:%q`)", pgcc.ErrInvalidArgument, name, typ, cfg.kind, cfg.version, cfg.version)
	}
	if t.d.isKey(t.d.version) {
		return nil, fmt.Errorf("%w: table %q: version column %q is also a key column", pgcc.ErrInvalidArgument, name, cfg.version)
	}
	t.version = t.fields[t.d.version]
	switch {
	case cfg.kind == VersionXmin && t.version.typ.Kind() != reflect.Uint32:
		return nil, fmt.Errorf("%w: table %q: the xmin field is %v; it must be uint32, the width of PostgreSQL's xid, which pgx scans only into unsigned 32-bit integers", pgcc.ErrInvalidArgument, name, t.version.typ)
	case !isInteger(t.version.typ):
		return nil, fmt.Errorf("%w: table %q: version field for column %q is %v; it must be an integer type", pgcc.ErrInvalidArgument, name, cfg.version, t.version.typ)
	}
	for _, c := range cfg.defaults {
		p := pos(c)
		switch {
		case p < 0:
			return nil, fmt.Errorf("%w: table %q: WithInsertDefaults: struct %v has no field for column %q", pgcc.ErrInvalidArgument, name, typ, c)
		case p == t.d.version:
			return nil, fmt.Errorf("%w: table %q: WithInsertDefaults: the version column %q is set by Insert itself", pgcc.ErrInvalidArgument, name, c)
		case !contains(t.d.defaults, p):
			t.d.defaults = append(t.d.defaults, p)
		}
	}
	t.sql = t.d.build()
	t.quoted = t.d.ident().Sanitize()
	for _, k := range t.d.key {
		t.keyCols = append(t.keyCols, t.d.cols[k])
	}
	return t, nil
}

// mapFields appends T's columns and fields in struct order, with pgx.RowToStructByName's rules.
func mapFields(typ reflect.Type, prefix []int, cols *[]string, fields *[]field) {
	for i := range typ.NumField() {
		sf := typ.Field(i)
		index := append(append([]int(nil), prefix...), i)
		if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			mapFields(sf.Type, index, cols, fields)
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
		*fields = append(*fields, field{index: index, typ: sf.Type})
	}
}

func isInteger(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// Identifier returns the table's name, schema-qualified when [InSchema] was given, unquoted: quote it with
// its Sanitize method.
func (t *Table[T]) Identifier() pgx.Identifier { return t.d.ident() }

// Name returns the table's quoted, schema-qualified name, as used in SQL and in error messages.
func (t *Table[T]) Name() string { return t.quoted }

// Kind returns the table's version kind.
func (t *Table[T]) Kind() VersionKind { return t.d.kind }

// KeyColumns returns the key columns' names, unquoted, in key order.
func (t *Table[T]) KeyColumns() []string { return append([]string(nil), t.keyCols...) }

// SelectColumns returns the names, unquoted, of every column T maps, in struct order: selecting them
// (quoted) and scanning with pgx.RowToStructByName[T] fills a T. For a [VersionXmin] table the list
// contains "xmin", the system column of type xid, which pgx scans into the uint32 field [WithXmin] asks
// for.
func (t *Table[T]) SelectColumns() []string { return append([]string(nil), t.d.cols...) }

// VersionColumn returns the version column's name: "version" by default, "xmin" for [VersionXmin].
func (t *Table[T]) VersionColumn() string { return t.d.cols[t.d.version] }

// KeyOf returns row's key, in key order.
func (t *Table[T]) KeyOf(row *T) pgcc.Key { return t.keyValues(reflect.ValueOf(row).Elem()) }

// VersionOf returns row's version.
func (t *Table[T]) VersionOf(row *T) int64 {
	return getInt(reflect.ValueOf(row).Elem().FieldByIndex(t.version.index))
}

func getInt(v reflect.Value) int64 {
	if v.CanInt() {
		return v.Int()
	}
	return int64(v.Uint())
}

func setInt(v reflect.Value, n int64) {
	if v.CanInt() {
		v.SetInt(n)
		return
	}
	v.SetUint(uint64(n))
}

// values appends the values of the fields at positions of v (a T) to args. Values, not pointers: pgx
// dereferences a pointer argument through reflection, which costs an allocation per argument.
func (t *Table[T]) values(args []any, v reflect.Value, positions []int) []any {
	for _, pos := range positions {
		args = append(args, v.FieldByIndex(t.fields[pos].index).Interface())
	}
	return args
}

// keyArgs appends the key of v to args.
func (t *Table[T]) keyArgs(args []any, v reflect.Value) []any {
	return t.values(args, v, t.d.key)
}

// keyValues is the key of v as values, for errors: pointers into the caller's row would change under them.
func (t *Table[T]) keyValues(v reflect.Value) pgcc.Key {
	key := make(pgcc.Key, len(t.d.key))
	for i, pos := range t.d.key {
		key[i] = v.FieldByIndex(t.fields[pos].index).Interface()
	}
	return key
}

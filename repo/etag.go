package repo

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/pgcc/pgcc"
)

// ETag returns version as a strong HTTP entity tag: `"7"`. A version identifies the row's stored state
// exactly (it changes whenever a value does), so the tag is strong when the representation is a function of
// the row alone; derive your own tag when it also depends on other rows or on content negotiation. For a
// [VersionTimestamp] table pass [Table.VersionOf], the timestamp in microseconds.
func ETag(version int64) string {
	return `"` + strconv.FormatInt(version, 10) + `"`
}

// ParseETag reads a version from an If-Match header (or any header carrying one entity tag), as [ETag]
// wrote it: `"7"`, or the weak form `W/"7"`, which proxies produce from a strong tag when they compress a
// response; surrounding spaces are ignored. Set the version in the row with [Table.SetVersion], or assign it
// to the version field.
//
// An empty header is an error matching [pgcc.ErrPreconditionRequired] (and [pgcc.ErrInvalidArgument]):
// a write that must be conditional came without its condition, which [pgcc.HTTPStatus] answers with 428.
// Anything else that is not one tag of this form ("*", a list of tags, a tag of another server, a number
// without quotes, "007") is an error matching [pgcc.ErrInvalidArgument] that quotes the header (400).
func ParseETag(header string) (int64, error) {
	h := strings.Trim(header, " \t")
	if h == "" {
		return 0, fmt.Errorf("%w: no If-Match header: send the ETag of the version you read", pgcc.ErrPreconditionRequired)
	}
	tag := strings.TrimPrefix(h, "W/")
	if len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		return 0, etagError(header)
	}
	digits := tag[1 : len(tag)-1]
	n, err := strconv.ParseInt(digits, 10, 64)
	// Only the form ETag writes: no sign, no leading zeros, no spaces inside the quotes.
	if err != nil || strconv.FormatInt(n, 10) != digits {
		return 0, etagError(header)
	}
	return n, nil
}

func etagError(header string) error {
	if len(header) > 80 {
		header = header[:77] + "..."
	}
	return fmt.Errorf("%w: entity tag %q is not a version tag such as \"7\" or W/\"7\"", pgcc.ErrInvalidArgument, header)
}

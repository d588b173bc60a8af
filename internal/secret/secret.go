// Package secret keeps passwords given in connection strings out of messages and command lines.
//
// pgx already redacts the password in a parse error's copy of the connection string, but only where it can
// tell where the password ends: in `postgresql+psycopg://u:p@ss@h/db` it shows `u:xxxxxx@t@h`, part of the
// password. pgcc's own messages therefore never include a connection string at all, and child processes
// (pgbench) get the password through the environment (PGPASSWORD), never through argv, which every user of
// the machine can read with ps.
package secret

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// quotedConnString is the copy of the connection string pgconn puts in a ParseConfigError's message.
var quotedConnString = regexp.MustCompile("^cannot parse `.*`: ")

// ParseError describes err, returned by pgx for a connection string that did not parse, without the
// connection string: "cannot parse the connection string: failed to parse as keyword/value (invalid
// keyword/value)". The result does not wrap the *pgconn.ParseConfigError, whose ConnString field holds the
// string as given, password included; it wraps the error that error wraps, if any. Any other error is
// returned unchanged.
func ParseError(err error) error {
	var pce *pgconn.ParseConfigError
	if !errors.As(err, &pce) {
		return err
	}
	msg := quotedConnString.ReplaceAllLiteralString(pce.Error(), "")
	if pw := Password(pce.ConnString); pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
	}
	if cause := pce.Unwrap(); cause != nil {
		return &parseError{msg: "cannot parse the connection string: " + msg, cause: cause}
	}
	return &parseError{msg: "cannot parse the connection string: " + msg}
}

type parseError struct {
	msg   string
	cause error
}

func (e *parseError) Error() string { return e.msg }
func (e *parseError) Unwrap() error { return e.cause }

// Password returns the password written in dsn, a URL (postgres://user:password@host/db?password=…) or a
// keyword/value string (password=… or password='…'), or "" when it names none. It is tolerant: it reads the
// strings pgx refuses too, so that a message about them can hide the password.
func Password(dsn string) string {
	if i := strings.Index(dsn, "://"); i >= 0 {
		rest := dsn[i+3:]
		// The authority ends at the first '/' or '?' after the last '@' of the userinfo: a password may
		// contain '@' and '/' only percent-encoded, but people write them raw.
		if at := strings.LastIndex(beforeQuery(rest), "@"); at >= 0 {
			userinfo := rest[:at]
			if _, pw, ok := strings.Cut(userinfo, ":"); ok {
				return pw
			}
		}
		if _, q, ok := strings.Cut(rest, "?"); ok {
			if v, err := url.ParseQuery(q); err == nil && v.Get("password") != "" {
				return v.Get("password")
			}
		}
		return ""
	}
	for _, kv := range keywordValues(dsn) {
		if kv[0] == "password" {
			return kv[1]
		}
	}
	return ""
}

// beforeQuery returns s up to its query string.
func beforeQuery(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i]
	}
	return s
}

// WithoutPassword returns dsn with its password removed, and the password, so that a child process can be
// given the connection string on its command line and the password in PGPASSWORD. dsn must be a connection
// string pgx accepts.
func WithoutPassword(dsn string) (stripped, password string, err error) {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return "", "", ParseError(err)
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", "", errors.New("cannot parse the connection string as a URL")
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				password = pw
			}
			u.User = url.User(u.User.Username())
		}
		q := u.Query()
		if q.Has("password") {
			if password == "" {
				password = q.Get("password")
			}
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		return u.String(), password, nil
	}
	var b strings.Builder
	for _, kv := range keywordValues(dsn) {
		if kv[0] == "password" {
			password = kv[1]
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s='%s'", kv[0], strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[1]))
	}
	return b.String(), password, nil
}

// keywordValues splits a keyword/value connection string as libpq does: keyword = value pairs separated by
// spaces, a value in single quotes with backslash escapes when it holds spaces or quotes. It stops at the
// first thing it cannot read.
func keywordValues(s string) [][2]string {
	var out [][2]string
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return out
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' {
			i++
		}
		key := s[start:i]
		skip()
		if i >= len(s) || s[i] != '=' {
			return out
		}
		i++
		skip()
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
			i++ // the closing quote
		} else {
			for i < len(s) && s[i] != ' ' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		out = append(out, [2]string{key, val.String()})
	}
}

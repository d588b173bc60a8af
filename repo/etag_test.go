package repo_test

import (
	"errors"
	"math"
	"testing"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
)

func TestETag(t *testing.T) {
	t.Parallel()
	for _, v := range []int64{0, 1, 7, -5, math.MaxInt64, math.MinInt64, 1732355025123456} {
		tag := repo.ETag(v)
		for _, h := range []string{tag, "W/" + tag, " " + tag + "\t"} {
			got, err := repo.ParseETag(h)
			if err != nil || got != v {
				t.Errorf("ParseETag(%q) = %d, %v; want %d", h, got, err, v)
			}
		}
	}
	if got := repo.ETag(7); got != `"7"` {
		t.Fatalf("ETag(7) = %s, want a strong tag", got)
	}
	for _, h := range []string{"", " ", "\t"} {
		_, err := repo.ParseETag(h)
		if !errors.Is(err, pgcc.ErrPreconditionRequired) || !errors.Is(err, pgcc.ErrInvalidArgument) || pgcc.HTTPStatus(err) != 428 {
			t.Errorf("ParseETag(%q): %v, want ErrPreconditionRequired (428)", h, err)
		}
	}
	for _, h := range []string{`7`, `"7`, `7"`, `""`, `"a"`, `*`, `"1", "2"`, `w/"7"`, `W/ "7"`, `"+7"`, `"007"`, `"-0"`, `" 7"`,
		`"9223372036854775808"`, `"7"x`, "\"7\"\n", `W/W/"7"`, `"0x7"`, `"1e3"`} {
		_, err := repo.ParseETag(h)
		if !errors.Is(err, pgcc.ErrInvalidArgument) || errors.Is(err, pgcc.ErrPreconditionRequired) || pgcc.HTTPStatus(err) != 400 {
			t.Errorf("ParseETag(%q): %v, want ErrInvalidArgument (400)", h, err)
		}
	}
}

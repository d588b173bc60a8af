package pgserver_test

import (
	"context"
	"fmt"

	"github.com/pgcc/pgcc/internal/pgserver"
)

// Reachable is a cheap probe before trying to connect: nothing listens on port 1.
func ExampleReachable() {
	fmt.Println(pgserver.Reachable(context.Background(), "127.0.0.1:1"))
	// Output: false
}

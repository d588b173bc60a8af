package repo

import "github.com/pgcc/pgcc"

// Waiting is the number of callers queued behind the running batch of key.
func (c *Combiner[T]) Waiting(key pgcc.Key) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.queues[keyString(key)]; q != nil {
		return len(q.waiting)
	}
	return 0
}

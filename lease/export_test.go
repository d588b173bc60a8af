package lease

// ReleasedEarlier exposes releasedEarlier, the rule that reads a retried release's answer, to the tests.
var ReleasedEarlier = releasedEarlier

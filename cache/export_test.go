package cache

import "time"

// SetLoadWait changes how long a consume waits to load its counter.
func (c *Counter) SetLoadWait(d time.Duration) { c.loadWait = d }

package cache

import (
	"fmt"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
)

// Timeouts are a client's limits: dialing, each read and write, the wait
// for a free connection; and how many connections it keeps.
type Timeouts struct {
	Dial, Read, Write, Pool time.Duration
	PoolSize                int
}

// Dial returns a client of the Redis that url names: of a Redis Cluster
// when it names several nodes (redis://host:port?addr=host:port&...,
// go-redis's cluster URL), else of one Redis. It answers the database
// number the URL names (always 0 on a cluster) and whether it is a
// cluster. The client does not retry a failed command (the hot path
// must switch to Postgres in milliseconds, not after a retry loop); a
// cluster client rereads the cluster's map of slots at least every
// second while it is used, and follows MOVED replies to a new master.
func Dial(redisURL string, t Timeouts) (rdb redis.UniversalClient, db int, cluster bool, err error) {
	u, err := url.Parse(redisURL)
	if err != nil {
		return nil, 0, false, fmt.Errorf("redis url: %w", err)
	}
	if !u.Query().Has("addr") {
		opt, err := redis.ParseURL(redisURL)
		if err != nil {
			return nil, 0, false, fmt.Errorf("redis url: %w", err)
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = t.Dial, t.Read, t.Write, t.Pool
		opt.PoolSize, opt.MaxRetries = t.PoolSize, -1
		return redis.NewClient(opt), opt.DB, false, nil
	}
	opt, err := redis.ParseClusterURL(redisURL)
	if err != nil {
		return nil, 0, false, fmt.Errorf("redis cluster url: %w", err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.PoolTimeout = t.Dial, t.Read, t.Write, t.Pool
	opt.PoolSize, opt.MaxRetries = t.PoolSize, -1
	// The default is a minute: a master's death would stay unseen that
	// long (redis/go-redis#3979).
	opt.ClusterStateReloadInterval = time.Second
	return redis.NewClusterClient(opt), 0, true, nil
}

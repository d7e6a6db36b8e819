package cache

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// redisHook counts what quotad asks of Redis: round trips (a command or a
// pipeline) and commands, so that the bench can report Redis calls per
// request.
type redisHook struct {
	trips, cmds prometheus.Counter
}

// Instrument registers Redis round-trip and command counters on reg and
// hooks them into the clients; a cluster client's into each node's
// client, which the batcher also uses directly.
func Instrument(reg *prometheus.Registry, clients ...redis.UniversalClient) {
	h := redisHook{
		trips: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_redis_roundtrips_total", Help: "Round trips to Redis (a command or a pipeline)."}),
		cmds:  prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_redis_commands_total", Help: "Commands sent to Redis."}),
	}
	reg.MustRegister(h.trips, h.cmds)
	for _, rdb := range clients {
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			cc.OnNewNode(func(node *redis.Client) { node.AddHook(h) })
			continue
		}
		rdb.AddHook(h)
	}
}

func (h redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Inc()
		h.cmds.Inc()
		return next(ctx, cmd)
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Inc()
		h.cmds.Add(float64(len(cmds)))
		return next(ctx, cmds)
	}
}

var _ redis.Hook = redisHook{}

package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Replication: a Redis Cluster for the tests, and a replica of one Redis.

// RedisCluster is a Redis Cluster of ClusterMasters masters with one
// replica each, every node a redis-server of StartRedis's kind (its own
// free port and temp dir) with cluster mode on. The masters split the
// 16,384 slots evenly. A short node timeout makes a replica take over a
// dead master within a few seconds.
type RedisCluster struct {
	// Masters[i] serves the i-th third of the slots; Replicas[i] replicates
	// it (until a failover swaps their roles).
	Masters, Replicas []*Redis
}

// ClusterMasters is how many masters StartRedisCluster starts.
const ClusterMasters = 3

// clusterNodeTimeout is the cluster's node timeout: how long a master may
// be unreachable before its replica is promoted.
const clusterNodeTimeout = 2 * time.Second

// StartRedisCluster starts the nodes, assigns the slots, joins them into
// one cluster and waits until every node reports it ok and every replica
// is in sync. The nodes are stopped and their data deleted at cleanup.
func StartRedisCluster(tb testing.TB, opts RedisOptions) *RedisCluster {
	tb.Helper()
	c := &RedisCluster{}
	tb.Cleanup(func() {
		for _, r := range c.nodes() {
			if err := r.shutdown(); err != nil {
				tb.Errorf("testenv: %v", err)
			}
		}
	})
	for i := range 2 * ClusterMasters {
		r, err := newRedis(opts, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10))
		if err != nil {
			fail(tb, err)
		}
		if i < ClusterMasters {
			c.Masters = append(c.Masters, r)
		} else {
			c.Replicas = append(c.Replicas, r)
		}
	}
	if err := c.form(); err != nil {
		fail(tb, fmt.Errorf("form the redis cluster: %w", err))
	}
	return c
}

func (c *RedisCluster) nodes() []*Redis {
	return append(append([]*Redis{}, c.Masters...), c.Replicas...)
}

// form assigns each master its slots, makes every node meet the first,
// makes each replica follow its master, and waits for the cluster.
func (c *RedisCluster) form() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	clients := make([]*redis.Client, 0, 2*ClusterMasters)
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	for _, r := range c.nodes() {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1}))
	}
	const slots = 16384
	for i := range ClusterMasters {
		from, to := i*slots/ClusterMasters, (i+1)*slots/ClusterMasters-1
		if err := clients[i].ClusterAddSlotsRange(ctx, from, to).Err(); err != nil {
			return fmt.Errorf("node %d: add slots %d-%d: %w", i, from, to, err)
		}
	}
	first := c.Masters[0]
	for i, cl := range clients[1:] {
		if err := cl.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(first.port)).Err(); err != nil {
			return fmt.Errorf("node %d: meet: %w", i+1, err)
		}
	}
	ids := make([]string, len(clients))
	for i, cl := range clients {
		id, err := cl.ClusterMyID(ctx).Result()
		if err != nil {
			return fmt.Errorf("node %d: myid: %w", i, err)
		}
		ids[i] = id
	}
	// A replica can follow its master only once it knows the master's id.
	for i := range ClusterMasters {
		replica := clients[ClusterMasters+i]
		if err := until(ctx, func() (bool, error) {
			err := replica.ClusterReplicate(ctx, ids[i]).Err()
			if err != nil && strings.Contains(err.Error(), "Unknown node") {
				return false, nil
			}
			return err == nil, err
		}); err != nil {
			return fmt.Errorf("replica %d: replicate %s: %w", i, ids[i], err)
		}
	}
	for i, cl := range clients {
		if err := until(ctx, func() (bool, error) {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return false, err
			}
			return strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(clients))), nil
		}); err != nil {
			return fmt.Errorf("node %d: cluster not ok: %w", i, err)
		}
	}
	for i := range ClusterMasters {
		if err := inSync(ctx, clients[ClusterMasters+i]); err != nil {
			return fmt.Errorf("replica %d: not in sync: %w", i, err)
		}
	}
	return nil
}

// inSync waits until replica's link to its master is up.
func inSync(ctx context.Context, replica *redis.Client) error {
	return until(ctx, func() (bool, error) {
		info, err := replica.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up"), err
	})
}

// until polls done until it answers true, fails, or ctx ends.
func until(ctx context.Context, done func() (bool, error)) error {
	for {
		ok, err := done()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return err
			}
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Addrs returns every node's 127.0.0.1:port, masters first.
func (c *RedisCluster) Addrs() []string {
	var addrs []string
	for _, r := range c.nodes() {
		addrs = append(addrs, r.Addr())
	}
	return addrs
}

// URL returns the cluster as go-redis's ParseClusterURL reads it:
// redis://<first master>?addr=<node>&addr=<node>...
func (c *RedisCluster) URL() string {
	addrs := c.Addrs()
	return "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
}

// CurrentMasters answers the nodes that are masters now (ROLE), in start
// order.
func (c *RedisCluster) CurrentMasters(ctx context.Context) ([]*Redis, error) {
	var out []*Redis
	for _, r := range c.nodes() {
		cl := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
		role, err := cl.Do(ctx, "ROLE").Slice()
		cl.Close()
		if err != nil {
			continue // down, or loading: not a master to pick
		}
		if len(role) > 0 && role[0] == "master" {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node of the cluster says it is a master")
	}
	return out, nil
}

// WaitHealthy waits until every node answers and reports the cluster ok,
// and ClusterMasters masters each have a replica in sync: the state after
// a node's restart in which a write can be confirmed by WAIT 1 again.
func (c *RedisCluster) WaitHealthy(ctx context.Context) error {
	clients := make([]*redis.Client, 0, len(c.nodes()))
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	for _, r := range c.nodes() {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1}))
	}
	return until(ctx, func() (bool, error) {
		synced := 0
		for _, cl := range clients {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false, nil
			}
			repl, err := cl.Info(ctx, "replication").Result()
			if err != nil {
				return false, nil
			}
			if strings.Contains(repl, "role:master") && strings.Contains(repl, "state=online") {
				synced++
			}
		}
		return synced == ClusterMasters, nil
	})
}

// MoveSlot moves slot from the master from to the master to while the
// cluster serves, as redis-cli --cluster reshard does: to imports it, from
// migrates it, its keys are MIGRATEd batch by batch, and then every master
// is told its new owner. Clients meanwhile get ASK and TRYAGAIN replies
// for it, and MOVED once it has moved. It answers how many keys it moved.
func (c *RedisCluster) MoveSlot(ctx context.Context, slot int, from, to *Redis) (int, error) {
	src := redis.NewClient(&redis.Options{Addr: from.addr(), MaxRetries: -1})
	defer src.Close()
	dst := redis.NewClient(&redis.Options{Addr: to.addr(), MaxRetries: -1})
	defer dst.Close()
	moved := 0
	srcID, err := src.ClusterMyID(ctx).Result()
	if err != nil {
		return moved, fmt.Errorf("move slot %d: %w", slot, err)
	}
	dstID, err := dst.ClusterMyID(ctx).Result()
	if err != nil {
		return moved, fmt.Errorf("move slot %d: %w", slot, err)
	}
	if err := dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err(); err != nil {
		return moved, fmt.Errorf("move slot %d: importing: %w", slot, err)
	}
	if err := src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err(); err != nil {
		return moved, fmt.Errorf("move slot %d: migrating: %w", slot, err)
	}
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		if err != nil {
			return moved, fmt.Errorf("move slot %d: keys: %w", slot, err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return moved, fmt.Errorf("move slot %d: migrate %d keys: %w", slot, len(keys), err)
		}
		moved += len(keys)
	}
	// The new owner first, so that it serves the slot before the old
	// one redirects there; then every other master.
	for _, r := range append([]*Redis{to, from}, c.Masters...) {
		cl := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
		err := cl.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err()
		cl.Close()
		if err != nil {
			return moved, fmt.Errorf("move slot %d: node %s: %w", slot, r.addr(), err)
		}
	}
	return moved, nil
}

// StartRedisReplica starts a redis-server replicating master (REPLICAOF),
// of StartRedis's kind, and waits until it is in sync. It is stopped and
// its data deleted at cleanup.
func StartRedisReplica(tb testing.TB, master *Redis) *Redis {
	tb.Helper()
	r, err := newRedis(RedisOptions{}, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	if err != nil {
		fail(tb, err)
	}
	tb.Cleanup(func() {
		if err := r.shutdown(); err != nil {
			tb.Errorf("testenv: %v", err)
		}
	})
	cl := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := inSync(ctx, cl); err != nil {
		fail(tb, fmt.Errorf("replica of %s not in sync: %w", master.Addr(), err))
	}
	return r
}

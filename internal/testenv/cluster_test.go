package testenv_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// TestRedisCluster: the helper's cluster serves keys of every slot through
// go-redis's cluster client, and when a master is killed its replica takes
// over its slots with the writes it had confirmed (WAIT).
func TestRedisCluster(t *testing.T) {
	c := testenv.StartRedisCluster(t, testenv.RedisOptions{})
	opt, err := redis.ParseClusterURL(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	if len(opt.Addrs) != 2*testenv.ClusterMasters {
		t.Fatalf("the URL names %d nodes, want %d", len(opt.Addrs), 2*testenv.ClusterMasters)
	}
	rdb := redis.NewClusterClient(opt)
	defer rdb.Close()
	ctx := context.Background()

	const keys = 300
	for i := range keys {
		if err := rdb.Set(ctx, "k"+strconv.Itoa(i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var masters atomic.Int32 // ForEachMaster calls fn for each master at once
	err = rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			t.Errorf("master %s holds no keys: the slots are not spread", m.Options().Addr)
		}
		masters.Add(1)
		// Every write so far is on the master's replica before the kill.
		return m.Do(ctx, "WAIT", 1, 5000).Err()
	})
	if err != nil || masters.Load() != testenv.ClusterMasters {
		t.Fatalf("%d masters (%v), want %d", masters.Load(), err, testenv.ClusterMasters)
	}

	c.Masters[0].Kill(t)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < keys; {
		v, err := rdb.Get(ctx, "k"+strconv.Itoa(i)).Int()
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("key %d unreadable 20 s after its master was killed: %v", i, err)
			}
			// go-redis keeps its slot map after a refused connection
			// until its reload interval (a minute; redis/go-redis#3979):
			// a client of a cluster reloads it when a node is gone.
			rdb.ReloadState(ctx)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if v != i {
			t.Fatalf("key %d reads %d after the failover", i, v)
		}
		i++
	}
	role, err := redis.NewClient(&redis.Options{Addr: c.Replicas[0].Addr()}).Do(ctx, "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] != "master" {
		t.Fatalf("the killed master's replica has role %v (%v), want master", role, err)
	}
}

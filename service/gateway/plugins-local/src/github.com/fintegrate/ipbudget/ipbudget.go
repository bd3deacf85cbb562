// Package ipbudget is the gateway's IP budget, a Traefik local plugin (run by Traefik's Go
// interpreter, Yaegi; nothing to compile): one token bucket per client IP, shared by every
// router that uses the middleware, and its refusals answered with the 429 envelope that
// service/gateway/config.py renders into the configuration. Traefik's own rateLimit keeps
// one bucket per router and answers in plain text; see docs/gateway.md.
//
// The client is the connection's address (RemoteAddr): the public entry point trusts no
// forwarded headers, so a client-sent X-Forwarded-For changes nothing.
package ipbudget

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Config is the middleware's configuration: requests per minute, burst, the 429 answer
// (body, Retry-After, a marker header) and how many clients are remembered at most.
type Config struct {
	Average    int    `json:"average,omitempty"`
	Burst      int    `json:"burst,omitempty"`
	Body       string `json:"body,omitempty"`
	RetryAfter string `json:"retryAfter,omitempty"`
	Header     string `json:"header,omitempty"`
	MaxClients int    `json:"maxClients,omitempty"`
}

// CreateConfig is the default configuration.
func CreateConfig() *Config {
	return &Config{Average: 100, Burst: 50, Body: "{}", RetryAfter: "1", MaxClients: 100000}
}

type bucket struct {
	tokens float64
	seen   time.Time
}

type budgets struct {
	mu      sync.Mutex
	clients map[string]*bucket
	swept   time.Time
}

var (
	sharedMu sync.Mutex
	shared   = map[string]*budgets{}
)

// Budget is one router's instance; the instances of one middleware name share the buckets.
type Budget struct {
	next     http.Handler
	budgets  *budgets
	rate     float64
	burst    float64
	body     []byte
	retry    string
	header   string
	capacity int
}

// New builds an instance on the buckets shared under name (Traefik calls it per router).
func New(ctx context.Context, next http.Handler, config *Config, name string) (http.Handler, error) {
	if config.Average < 1 || config.Burst < 1 || config.MaxClients < 1 {
		return nil, fmt.Errorf("ipbudget: average, burst and maxClients must be positive")
	}
	sharedMu.Lock()
	b, ok := shared[name]
	if !ok {
		b = &budgets{clients: map[string]*bucket{}}
		shared[name] = b
	}
	sharedMu.Unlock()
	return &Budget{
		next: next, budgets: b,
		rate: float64(config.Average) / 60.0, burst: float64(config.Burst),
		body: []byte(config.Body), retry: config.RetryAfter, header: config.Header,
		capacity: config.MaxClients,
	}, nil
}

// ServeHTTP passes the request on while the client has a token, else answers 429.
func (m *Budget) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if m.take(clientIP(req.RemoteAddr), time.Now()) {
		m.next.ServeHTTP(rw, req)
		return
	}
	h := rw.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(m.body)))
	h.Set("Retry-After", m.retry)
	if m.header != "" {
		h.Set(m.header, "gateway")
	}
	rw.WriteHeader(http.StatusTooManyRequests)
	if req.Method != http.MethodHead {
		_, _ = rw.Write(m.body)
	}
}

// take spends one token of ip's bucket; false when it has none (the request is refused).
func (m *Budget) take(ip string, now time.Time) bool {
	b := m.budgets
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.clients[ip]
	if !ok {
		if len(b.clients) >= m.capacity {
			m.makeRoom(now)
		}
		c = &bucket{tokens: m.burst, seen: now}
		b.clients[ip] = c
	}
	c.tokens += now.Sub(c.seen).Seconds() * m.rate
	if c.tokens > m.burst {
		c.tokens = m.burst
	}
	c.seen = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// makeRoom drops the clients whose bucket has refilled (forgetting them changes nothing),
// at most once a second; when every bucket is in use, one arbitrary client is forgotten.
func (m *Budget) makeRoom(now time.Time) {
	b := m.budgets
	if now.Sub(b.swept) >= time.Second {
		b.swept = now
		for ip, c := range b.clients {
			if c.tokens+now.Sub(c.seen).Seconds()*m.rate >= m.burst {
				delete(b.clients, ip)
			}
		}
	}
	for ip := range b.clients {
		if len(b.clients) < m.capacity {
			return
		}
		delete(b.clients, ip)
	}
}

// clientIP is the host part of a "host:port" connection address.
func clientIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

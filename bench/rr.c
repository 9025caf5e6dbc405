/*
 * C request/response reference for `python -m bench` (libmosquitto, one process, epoll).
 *
 * DEVICES clients ("bench-c-%05d", persistent sessions like the simulated devices) and one
 * service client on one loop. Each device subscribes to bench/rsp/<i> (QoS q); the service
 * subscribes to bench/req/+ and answers every request on bench/rsp/<i> with the same
 * payload. Measured, in this order:
 *
 *   connect     connect + subscribe all devices (at most 64 awaiting SUBACK at a time,
 *               like devicesim.engine.Fleet), and VmRSS before/after (memory per client)
 *   idle        CPU of this process over IDLE seconds with everything connected
 *   light       device 0 alone, sequential round trips for LIGHT seconds (latency floor)
 *   load        every device closed loop (one request in flight each) for SECONDS after a
 *               warm-up: round trips/s and latency percentiles
 *
 * Output: {"event": "measure-start"} and {"event": "measure-end"} lines around the load
 * window (so a parent can sample the broker's CPU), then one JSON object. Usage:
 *   rr HOST PORT DEVICES SECONDS QOS IDLE LIGHT WARMUP PAYLOAD_BYTES
 */
#define _GNU_SOURCE
#include <errno.h>
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { IDLE_MODE = 0, LIGHT_MODE = 1, LOAD_MODE = 2, DRAIN_MODE = 3 };

typedef struct {
    struct mosquitto *m;
    int index; /* -1: the service */
    int fd;
    int subscribed;
    int out_armed;
    double sent;
    char topic[64];
} peer;

static peer *devices;
static peer service;
static int n_devices, qos, mode, epfd, awaiting_suback, payload_len;
static char *payload;
static double measure_from, measure_to;
static long round_trips, light_trips;
static double *samples;
static long n_samples, cap_samples;
static double *light_samples;
static long n_light, cap_light;
static long errors;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static long vm_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static void watch(peer *p, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = p};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev) == 0) p->out_armed = out;
}

static void flush(peer *p) {
    if (mosquitto_want_write(p->m)) mosquitto_loop_write(p->m, 1);
    int want = mosquitto_want_write(p->m) ? 1 : 0;
    if (want != p->out_armed) watch(p, want);
}

static void send_request(peer *d) {
    d->sent = now();
    if (mosquitto_publish(d->m, NULL, d->topic, payload_len, payload, qos, false) !=
        MOSQ_ERR_SUCCESS)
        errors++;
    flush(d);
}

static void on_service_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)obj;
    const char *slash = strrchr(msg->topic, '/');
    char topic[64];
    snprintf(topic, sizeof topic, "bench/rsp/%s", slash ? slash + 1 : "x");
    if (mosquitto_publish(m, NULL, topic, msg->payloadlen, msg->payload, qos, false) !=
        MOSQ_ERR_SUCCESS)
        errors++;
}

static void record(double **buf, long *n, long *cap, double value) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 65536;
        *buf = realloc(*buf, *cap * sizeof(double));
    }
    (*buf)[(*n)++] = value;
}

static void on_device_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m;
    (void)msg;
    peer *d = obj;
    double t = now(), rtt = t - d->sent;
    if (mode == LIGHT_MODE) {
        light_trips++;
        record(&light_samples, &n_light, &cap_light, rtt);
        send_request(d);
    } else if (mode == LOAD_MODE) {
        if (t >= measure_from && t < measure_to) {
            round_trips++;
            record(&samples, &n_samples, &cap_samples, rtt);
        }
        send_request(d);
    }
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted) {
    (void)m, (void)mid, (void)n, (void)granted;
    peer *p = obj;
    if (!p->subscribed) {
        p->subscribed = 1;
        awaiting_suback--;
    }
}

static void on_connect(struct mosquitto *m, void *obj, int rc) {
    peer *p = obj;
    if (rc != 0) {
        fprintf(stderr, "CONNACK %d for %d\n", rc, p->index);
        exit(3);
    }
    const char *filter = p->index < 0 ? "bench/req/+" : NULL;
    char own[64];
    if (!filter) {
        snprintf(own, sizeof own, "bench/rsp/%d", p->index);
        filter = own;
    }
    mosquitto_subscribe(m, NULL, filter, qos);
}

static int start_client(peer *p, const char *host, int port) {
    char id[64];
    if (p->index < 0)
        snprintf(id, sizeof id, "bench-c-service-%d", (int)getpid());
    else
        snprintf(id, sizeof id, "bench-c-%05d", p->index);
    p->m = mosquitto_new(id, false, p);
    if (!p->m) return -1;
    mosquitto_max_inflight_messages_set(p->m, p->index < 0 ? 1000 : 20);
    mosquitto_int_option(p->m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_callback_set(p->m, on_connect);
    mosquitto_subscribe_callback_set(p->m, on_subscribe);
    mosquitto_message_callback_set(p->m, p->index < 0 ? on_service_message : on_device_message);
    if (mosquitto_connect(p->m, host, port, 60) != MOSQ_ERR_SUCCESS) return -1;
    p->fd = mosquitto_socket(p->m);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, p->fd, &ev) != 0) return -1;
    awaiting_suback++;
    flush(p);
    return 0;
}

static void misc_all(void) {
    mosquitto_loop_misc(service.m);
    flush(&service);
    for (int i = 0; i < n_devices && devices[i].m; i++) {
        mosquitto_loop_misc(devices[i].m);
        flush(&devices[i]);
    }
}

static double last_misc;

static void run_for(double seconds) {
    static struct epoll_event events[1024];
    double until = now() + seconds;
    for (;;) {
        double t = now();
        if (t >= until) return;
        if (t - last_misc >= 1.0) {
            misc_all();
            last_misc = t;
        }
        int timeout = (int)((until - t) * 1000) + 1;
        if (timeout > 100) timeout = 100;
        int n = epoll_wait(epfd, events, 1024, timeout);
        for (int i = 0; i < n; i++) {
            peer *p = events[i].data.ptr;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int rc = mosquitto_loop_read(p->m, 1);
                if (rc != MOSQ_ERR_SUCCESS) {
                    fprintf(stderr, "read failed client=%d rc=%d\n", p->index, rc);
                    exit(4);
                }
            }
            flush(p);
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p) { /* nearest rank, like fleet.checker */
    if (n == 0) return 0;
    long rank = (long)(p / 100.0 * n + 0.999999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return v[rank - 1];
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: rr HOST PORT DEVICES SECONDS QOS IDLE LIGHT WARMUP PAYLOAD\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    n_devices = atoi(argv[3]);
    double seconds = atof(argv[4]), idle = atof(argv[6]), light = atof(argv[7]);
    double warmup = atof(argv[8]);
    qos = atoi(argv[5]);
    payload_len = atoi(argv[9]);
    payload = malloc(payload_len + 1);
    memset(payload, 'x', payload_len);
    epfd = epoll_create1(0);
    mosquitto_lib_init();

    devices = calloc(n_devices, sizeof(peer));
    long rss_before = vm_rss_kb();
    service.index = -1;
    if (start_client(&service, host, port) != 0) {
        fprintf(stderr, "service connect failed: %s\n", strerror(errno));
        return 3;
    }
    while (awaiting_suback) run_for(0.01);

    double t0 = now();
    last_misc = t0;
    for (int i = 0; i < n_devices; i++) {
        devices[i].index = i;
        snprintf(devices[i].topic, sizeof devices[i].topic, "bench/req/%d", i);
        while (awaiting_suback >= 64) run_for(0.001);
        if (start_client(&devices[i], host, port) != 0) {
            fprintf(stderr, "device %d connect failed: %s\n", i, strerror(errno));
            return 3;
        }
    }
    while (awaiting_suback) run_for(0.001);
    double connect_seconds = now() - t0;
    long rss_after = vm_rss_kb();

    double cpu0 = cpu_seconds(), w0 = now();
    run_for(idle);
    double idle_cpu = (cpu_seconds() - cpu0) / (now() - w0);

    mode = LIGHT_MODE;
    double l0 = now();
    send_request(&devices[0]);
    run_for(light);
    double light_seconds = now() - l0;
    mode = IDLE_MODE;
    run_for(0.1); /* let the last light round trip land */

    mode = LOAD_MODE;
    double start = now();
    measure_from = start + warmup;
    measure_to = measure_from + seconds;
    for (int i = 0; i < n_devices; i++) send_request(&devices[i]);
    run_for(warmup);
    printf("{\"event\": \"measure-start\"}\n");
    fflush(stdout);
    double cpu1 = cpu_seconds();
    run_for(seconds);
    double load_cpu = cpu_seconds() - cpu1;
    printf("{\"event\": \"measure-end\"}\n");
    fflush(stdout);
    mode = DRAIN_MODE;
    run_for(0.3);

    qsort(samples, n_samples, sizeof(double), cmp);
    qsort(light_samples, n_light, sizeof(double), cmp);
    printf("{\"devices\": %d, \"qos\": %d, \"payload_bytes\": %d, \"connect_seconds\": %.6f, "
           "\"rss_before_kb\": %ld, \"rss_after_kb\": %ld, \"idle_seconds\": %.3f, "
           "\"idle_cpu_fraction\": %.6f, \"light_round_trips\": %ld, \"light_seconds\": %.3f, "
           "\"light_p50_ms\": %.4f, \"light_p99_ms\": %.4f, \"light_max_ms\": %.4f, "
           "\"seconds\": %.3f, "
           "\"round_trips\": %ld, \"round_trips_per_second\": %.1f, \"p50_ms\": %.3f, "
           "\"p99_ms\": %.3f, \"cpu_seconds\": %.4f, \"errors\": %ld}\n",
           n_devices, qos, payload_len, connect_seconds, rss_before, rss_after, idle, idle_cpu,
           light_trips, light_seconds, pct(light_samples, n_light, 50) * 1000,
           pct(light_samples, n_light, 99) * 1000,
           n_light ? light_samples[n_light - 1] * 1000 : 0.0, seconds, round_trips,
           round_trips / seconds, pct(samples, n_samples, 50) * 1000,
           pct(samples, n_samples, 99) * 1000, load_cpu, errors);
    fflush(stdout);
    for (int i = 0; i < n_devices; i++) {
        mosquitto_disconnect(devices[i].m);
        mosquitto_loop_write(devices[i].m, 1);
        mosquitto_destroy(devices[i].m);
    }
    mosquitto_disconnect(service.m);
    mosquitto_loop_write(service.m, 1);
    mosquitto_destroy(service.m);
    mosquitto_lib_cleanup();
    return 0;
}

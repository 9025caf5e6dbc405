/*
 * agent.c - a small AWS IoT Jobs device agent in C (libmosquitto + cJSON), written outside
 * devicesim, to be tested against it (fleet up) or against AWS IoT Core.
 *
 * It is shaped like the AWS IoT Device SDK for Embedded C jobs demo
 * (demos/jobs/jobs_demo_mosquitto/jobs_demo_mosquitto.c): one handle struct holding the
 * options and the run state, libmosquitto callbacks that react to what arrives, and a
 * single-threaded main loop that calls mosquitto_loop() in short slices and times the steps.
 * That demo subscribes to notify-next, start-next/accepted and +/update/rejected (and notes
 * that update/accepted arrives "even without a subscription"); this agent subscribes to
 * notify-next alone and relies on what that note observed: AWS IoT Core (and devicesim's
 * broker plugin) delivers each reply (/accepted, /rejected) to the requester, unasked.
 *
 *   connect    -> subscribe $aws/things/T/jobs/notify-next, publish start-next
 *   start-next accepted with an execution -> run it: per step an IN_PROGRESS update
 *              {"step": name}, then wait the step's seconds (x --pace) while the loop keeps
 *              servicing the network; then SUCCEEDED / FAILED (failAtStep) / REJECTED (a
 *              document it cannot run); once that update's reply arrived: start-next
 *   abort      (default agent) while running, a notify-next naming no or another execution,
 *              or a rejected update of the job (other than VersionMismatch), ends the job at
 *              once: no further update for it, start-next
 *   --naive    never checks: ignores notify-next and rejections while running
 *
 * Every request carries a fresh clientToken "ag<pid>-<n>"; a reply whose token was already
 * handled (a QoS 1 redelivery) is ignored. No reply to start-next or to a final update within
 * 10 s: start-next again. Lost connection: reconnect once a second, subscribe, start-next (while
 * running, its reply confirms that the execution is still ours, or aborts it).
 *
 * Build: cc -O2 -Wall -Wextra -Werror -std=gnu11 -o agent agent.c -lmosquitto -lcjson
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>

#define MAX_STEPS      16
#define NAME_LEN       32
#define ID_LEN         128
#define TOPIC_LEN      512
#define SEEN_TOKENS    64
#define REPLY_TIMEOUT  10.0 /* seconds without the reply to start-next / a final update */

typedef enum { IDLE, WAIT_START, RUNNING, WAIT_FINAL } phase_t;

typedef struct {
    char name[NAME_LEN];
    double seconds;
} step_t;

/* All options and run state (cf. handle_t of the SDK demo). */
typedef struct {
    const char *host, *thing, *cafile, *cert, *key;
    int port;
    bool naive;
    double pace;
    struct mosquitto *m;
    bool connected, ever_connected;
    int connack;                 /* -1 until the first CONNACK */
    double next_reconnect;
    char prefix[32];             /* this process's clientToken prefix */
    unsigned long seq;           /* last clientToken number sent */
    unsigned long seen[SEEN_TOKENS];
    int seen_next;
    phase_t phase;
    double sent_at;              /* when start-next / the final update went out */
    /* the current job */
    char job_id[ID_LEN];
    long exec_no;
    unsigned long first_seq;     /* first token number sent for this execution */
    unsigned long final_seq;     /* token of its final update */
    step_t steps[MAX_STEPS];
    int n_steps, step;
    char fail_at[NAME_LEN];
    double deadline;             /* end of the current step */
    int jobs_started;
} agent_t;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One line per action on stdout, flushed, so a test log reads well. */
static void say(const agent_t *a, const char *fmt, ...)
{
    va_list ap;
    printf("agent %s: ", a->thing);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* Publish `body` (consumed) with a fresh clientToken on $aws/things/T/jobs/<suffix>. */
static unsigned long request(agent_t *a, const char *suffix, cJSON *body)
{
    char topic[TOPIC_LEN], token[64];
    unsigned long seq = ++a->seq;
    snprintf(token, sizeof token, "%s%lu", a->prefix, seq);
    cJSON_AddStringToObject(body, "clientToken", token);
    snprintf(topic, sizeof topic, "$aws/things/%s/jobs/%s", a->thing, suffix);
    char *payload = cJSON_PrintUnformatted(body);
    int rc = mosquitto_publish(a->m, NULL, topic, (int)strlen(payload), payload, 1, false);
    if (rc != MOSQ_ERR_SUCCESS)
        say(a, "publish %s not sent: %s", suffix, mosquitto_strerror(rc));
    free(payload);
    cJSON_Delete(body);
    return seq;
}

static void start_next(agent_t *a)
{
    request(a, "start-next", cJSON_CreateObject());
    a->phase = WAIT_START;
    a->sent_at = now();
}

/* UpdateJobExecution of the current job; `key`/`value` (optional) go into statusDetails. */
static unsigned long update(agent_t *a, const char *status, const char *key, const char *value)
{
    char suffix[TOPIC_LEN];
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "status", status);
    if (key)
        cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "statusDetails"), key, value);
    snprintf(suffix, sizeof suffix, "%s/update", a->job_id);
    return request(a, suffix, body);
}

static void finish(agent_t *a, const char *status, const char *reason)
{
    say(a, "%s %s%s%s", a->job_id, status, reason ? ": " : "", reason ? reason : "");
    a->final_seq = update(a, status, reason ? "reason" : NULL, reason);
    a->phase = WAIT_FINAL;
    a->sent_at = now();
}

/* Stop the current job at once (no further update for it) and ask for the next one. */
static void abort_job(agent_t *a, const char *why)
{
    say(a, "aborting %s (#%ld): %s", a->job_id, a->exec_no, why);
    a->job_id[0] = '\0';
    start_next(a);
}

static void begin_step(agent_t *a)
{
    const step_t *s = &a->steps[a->step];
    say(a, "%s step %s (%.2f s)", a->job_id, s->name, s->seconds * a->pace);
    update(a, "IN_PROGRESS", "step", s->name);
    a->deadline = now() + s->seconds * a->pace;
}

/* Called by the main loop: the current step's time is up. */
static void step_done(agent_t *a)
{
    const char *name = a->steps[a->step].name;
    if (a->fail_at[0] && strcmp(name, a->fail_at) == 0) {
        char reason[96];
        snprintf(reason, sizeof reason, "failAtStep: %s failed", name);
        finish(a, "FAILED", reason);
    } else if (++a->step == a->n_steps) {
        finish(a, "SUCCEEDED", NULL);
    } else {
        begin_step(a);
    }
}

static bool add_step(agent_t *a, const char *name, double seconds)
{
    if (a->n_steps == MAX_STEPS || strlen(name) == 0 || strlen(name) >= NAME_LEN)
        return false;
    snprintf(a->steps[a->n_steps].name, NAME_LEN, "%s", name);
    a->steps[a->n_steps++].seconds = seconds;
    return true;
}

static bool valid_seconds(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 86400;
}

/* Turn a job document into steps; NULL if runnable, else the reason to report REJECTED. */
static const char *plan(agent_t *a, const cJSON *doc)
{
    static const step_t defaults[] = {
        {"download", 0.2}, {"install", 0.2}, {"reboot", 0.1}, {"verify", 0.1}};
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(doc, "operation");
    a->n_steps = 0;
    a->fail_at[0] = '\0';
    if (!cJSON_IsObject(doc))
        return "job document must be a JSON object";
    if (!cJSON_IsString(op))
        return "operation must be a string";
    if (strcmp(op->valuestring, "sleep") == 0) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, "seconds");
        if (sec && !valid_seconds(sec))
            return "seconds must be a number between 0 and 86400";
        add_step(a, "sleep", sec ? sec->valuedouble : 1.0);
        return NULL;
    }
    if (strcmp(op->valuestring, "firmware-update") != 0)
        return "unknown operation";
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(doc, "steps");
    const cJSON *fail = cJSON_GetObjectItemCaseSensitive(doc, "failAtStep");
    if (!steps) {
        for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
            add_step(a, defaults[i].name, defaults[i].seconds);
    } else if (!cJSON_IsArray(steps) || cJSON_GetArraySize(steps) == 0) {
        return "steps must be a non-empty list";
    } else {
        const cJSON *s;
        cJSON_ArrayForEach(s, steps) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "name");
            const cJSON *sec = cJSON_GetObjectItemCaseSensitive(s, "seconds");
            if (!cJSON_IsString(name) || (sec && !valid_seconds(sec)))
                return "each step needs a name and at most 86400 seconds";
            double d = 0.2;
            for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
                if (strcmp(defaults[i].name, name->valuestring) == 0)
                    d = defaults[i].seconds;
            if (!add_step(a, name->valuestring, sec ? sec->valuedouble : d))
                return "too many steps, or a step name too long";
        }
    }
    if (fail) {
        bool known = false;
        for (int i = 0; i < a->n_steps; i++)
            known = known || (cJSON_IsString(fail) && !strcmp(fail->valuestring, a->steps[i].name));
        if (!known)
            return "failAtStep must name one of the steps";
        snprintf(a->fail_at, sizeof a->fail_at, "%s", fail->valuestring);
    }
    return NULL;
}

/* Start running an execution that start-next handed us (now IN_PROGRESS). */
static void start_job(agent_t *a, const cJSON *ex)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ex, "jobId");
    const cJSON *no = cJSON_GetObjectItemCaseSensitive(ex, "executionNumber");
    if (!cJSON_IsString(id) || strlen(id->valuestring) >= ID_LEN) {
        say(a, "start-next: execution without a usable jobId, ignored");
        a->phase = IDLE;
        return;
    }
    snprintf(a->job_id, sizeof a->job_id, "%s", id->valuestring);
    a->exec_no = cJSON_IsNumber(no) ? (long)no->valuedouble : 0;
    a->first_seq = a->seq + 1;
    say(a, "started job %s (#%ld)", a->job_id, a->exec_no);
    a->jobs_started++;
    const char *reason = plan(a, cJSON_GetObjectItemCaseSensitive(ex, "jobDocument"));
    if (reason) {
        finish(a, "REJECTED", reason);
        return;
    }
    a->phase = RUNNING;
    a->step = 0;
    begin_step(a);
}

/* Is `ex` (an execution object, or NULL) the execution we are running? */
static bool is_current(const agent_t *a, const cJSON *ex)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ex, "jobId");
    const cJSON *no = cJSON_GetObjectItemCaseSensitive(ex, "executionNumber");
    return cJSON_IsString(id) && strcmp(id->valuestring, a->job_id) == 0
           && (!cJSON_IsNumber(no) || (long)no->valuedouble == a->exec_no);
}

static void on_notify_next(agent_t *a, const cJSON *msg)
{
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(msg, "execution");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ex, "jobId");
    const char *named = cJSON_IsString(id) ? id->valuestring : "no execution";
    if (a->phase == RUNNING) {
        if (is_current(a, ex))
            return;
        if (a->naive)
            say(a, "notify-next names %s, ignored (--naive)", named);
        else
            abort_job(a, ex ? "notify-next names another execution"
                            : "notify-next names no execution");
    } else if ((a->phase == IDLE || a->phase == WAIT_START) && ex) {
        say(a, "notify-next: %s pending", named);
        start_next(a);
    }
}

static void on_start_next_reply(agent_t *a, bool accepted, const cJSON *msg)
{
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(msg, "execution");
    if (!accepted) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(msg, "code");
        say(a, "start-next rejected: %s", cJSON_IsString(code) ? code->valuestring : "?");
        return; /* still WAIT_START: retried after REPLY_TIMEOUT */
    }
    if (a->phase == RUNNING) { /* only after a reconnect: is our execution still the one? */
        if (is_current(a, ex) || a->naive)
            return;
        say(a, "aborting %s (#%ld): start-next names %s", a->job_id, a->exec_no,
            ex ? "another execution" : "no execution");
        a->job_id[0] = '\0';
        a->phase = WAIT_START;
    }
    if (a->phase != WAIT_START)
        return;
    if (ex) {
        start_job(a, ex);
    } else {
        say(a, "idle: no pending job");
        a->phase = IDLE;
    }
}

static void on_update_reply(agent_t *a, const char *job_id, unsigned long seq, bool accepted,
                            const cJSON *msg)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(msg, "code");
    const char *c = cJSON_IsString(code) ? code->valuestring : "?";
    bool ours = a->job_id[0] && strcmp(job_id, a->job_id) == 0 && seq >= a->first_seq;
    if (ours && a->phase == WAIT_FINAL && seq == a->final_seq) {
        say(a, "%s final update %s%s%s", job_id, accepted ? "accepted" : "rejected: ",
            accepted ? "" : c, "; asking for the next job");
        a->job_id[0] = '\0';
        start_next(a);
    } else if (!accepted) {
        bool abort = ours && a->phase == RUNNING && !a->naive
                     && strncmp(c, "VersionMismatch", 15) != 0;
        if (abort)
            abort_job(a, c);
        else
            say(a, "%s update rejected: %s, ignored%s", job_id, c, a->naive ? " (--naive)" : "");
    }
}

static bool already_handled(agent_t *a, unsigned long seq)
{
    for (int i = 0; i < SEEN_TOKENS; i++)
        if (a->seen[i] == seq)
            return true;
    a->seen[a->seen_next] = seq;
    a->seen_next = (a->seen_next + 1) % SEEN_TOKENS;
    return false;
}

static void on_message(struct mosquitto *m, void *p, const struct mosquitto_message *msg)
{
    (void)m;
    agent_t *a = p;
    char base[TOPIC_LEN];
    int blen = snprintf(base, sizeof base, "$aws/things/%s/jobs/", a->thing);
    if (strncmp(msg->topic, base, (size_t)blen) != 0)
        return;
    const char *rest = msg->topic + blen;
    cJSON *body = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    if (!cJSON_IsObject(body)) {
        say(a, "%s: payload is not a JSON object, ignored", rest);
    } else if (strcmp(rest, "notify-next") == 0) {
        on_notify_next(a, body);
    } else {
        /* a reply: .../start-next/{accepted,rejected} or .../<jobId>/update/{accepted,rejected} */
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(body, "clientToken");
        const char *slash = strrchr(rest, '/');
        size_t plen = strlen(a->prefix);
        unsigned long seq = 0;
        if (cJSON_IsString(tok) && strncmp(tok->valuestring, a->prefix, plen) == 0)
            seq = strtoul(tok->valuestring + plen, NULL, 10);
        bool accepted = slash && strcmp(slash, "/accepted") == 0;
        if (!slash || (!accepted && strcmp(slash, "/rejected") != 0) || seq == 0
            || already_handled(a, seq)) {
            /* not a reply to one of our requests, or a duplicate */
        } else if ((size_t)(slash - rest) == strlen("start-next")
                   && strncmp(rest, "start-next", 10) == 0) {
            on_start_next_reply(a, accepted, body);
        } else if (slash - rest > 7 && strncmp(slash - 7, "/update", 7) == 0) {
            char job_id[ID_LEN];
            snprintf(job_id, sizeof job_id, "%.*s", (int)(slash - 7 - rest), rest);
            on_update_reply(a, job_id, seq, accepted, body);
        }
    }
    cJSON_Delete(body);
}

static void on_connect(struct mosquitto *m, void *p, int rc)
{
    agent_t *a = p;
    char topic[TOPIC_LEN];
    a->connack = rc;
    if (rc != 0) {
        if (a->ever_connected) /* the first refusal is main()'s one-line error */
            say(a, "connection refused: %s", mosquitto_connack_string(rc));
        return;
    }
    say(a, "connected to %s:%d%s", a->host, a->port, a->cafile ? " (mutual TLS)" : "");
    a->connected = a->ever_connected = true;
    snprintf(topic, sizeof topic, "$aws/things/%s/jobs/notify-next", a->thing);
    mosquitto_subscribe(m, NULL, topic, 1);
    if (a->phase == RUNNING) {
        request(a, "start-next", cJSON_CreateObject()); /* confirms our execution still is */
    } else {
        a->job_id[0] = '\0'; /* a final update's reply may be lost: move on */
        start_next(a);
    }
}

static void on_disconnect(struct mosquitto *m, void *p, int rc)
{
    (void)m;
    agent_t *a = p;
    if (a->connected && !stop_requested)
        say(a, "connection lost (%s), reconnecting", mosquitto_strerror(rc));
    a->connected = false;
}

static int usage_error(const char *msg)
{
    fprintf(stderr, "agent: %s (usage: agent --host H --port P --thing NAME"
                    " [--cafile F --cert F --key F] [--naive] [--pace X])\n", msg);
    return 2;
}

static int parse_args(agent_t *a, int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'h'}, {"port", required_argument, NULL, 'p'},
        {"thing", required_argument, NULL, 't'}, {"cafile", required_argument, NULL, 'C'},
        {"cert", required_argument, NULL, 'c'}, {"key", required_argument, NULL, 'k'},
        {"naive", no_argument, NULL, 'n'}, {"pace", required_argument, NULL, 'x'},
        {NULL, 0, NULL, 0}};
    char *end;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'h': a->host = optarg; break;
        case 't': a->thing = optarg; break;
        case 'C': a->cafile = optarg; break;
        case 'c': a->cert = optarg; break;
        case 'k': a->key = optarg; break;
        case 'n': a->naive = true; break;
        case 'p':
            a->port = (int)strtol(optarg, &end, 10);
            if (*end || a->port < 1 || a->port > 65535)
                return usage_error("--port must be 1-65535");
            break;
        case 'x':
            a->pace = strtod(optarg, &end);
            if (*end || !(a->pace > 0 && a->pace < 1e6))
                return usage_error("--pace must be a positive number");
            break;
        default:
            return usage_error("unknown option or missing value");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument");
    if (!a->host || !a->thing || !a->port)
        return usage_error("--host, --port and --thing are required");
    if (strlen(a->thing) == 0 || strlen(a->thing) > 128 || strpbrk(a->thing, "/+#"))
        return usage_error("--thing must be a thing name (1-128 characters, no / + #)");
    if ((a->cafile || a->cert || a->key) && !(a->cafile && a->cert && a->key))
        return usage_error("--cafile, --cert and --key go together");
    return 0;
}

int main(int argc, char **argv)
{
    agent_t a = {.pace = 1.0, .connack = -1, .phase = IDLE};
    int rc = parse_args(&a, argc, argv);
    if (rc)
        return rc;
    snprintf(a.prefix, sizeof a.prefix, "ag%ld-", (long)getpid());

    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: wake the loop */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    mosquitto_lib_init();
    a.m = mosquitto_new(a.thing, true, &a); /* client id = thing name, clean session */
    if (!a.m) {
        fprintf(stderr, "agent: mosquitto_new failed\n");
        return 1;
    }
    mosquitto_int_option(a.m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_connect_callback_set(a.m, on_connect);
    mosquitto_disconnect_callback_set(a.m, on_disconnect);
    mosquitto_message_callback_set(a.m, on_message);
    if (a.cafile && (rc = mosquitto_tls_set(a.m, a.cafile, NULL, a.cert, a.key, NULL))) {
        fprintf(stderr, "agent: TLS set-up failed: %s\n", mosquitto_strerror(rc));
        return 1;
    }
    rc = mosquitto_connect(a.m, a.host, a.port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "agent: cannot connect to %s:%d: %s\n", a.host, a.port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return 1;
    }
    /* Wait for the first CONNACK: a refusal or a dropped connection ends the agent. */
    double give_up = now() + 10;
    while (a.connack < 0 && !stop_requested && now() < give_up)
        if ((rc = mosquitto_loop(a.m, 100, 1)) != MOSQ_ERR_SUCCESS)
            break;
    if (!a.ever_connected && !stop_requested) {
        fprintf(stderr, "agent: connection to %s:%d failed: %s\n", a.host, a.port,
                a.connack > 0 ? mosquitto_connack_string(a.connack)
                : rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror(rc) : "no CONNACK");
        return 1;
    }

    while (!stop_requested) {
        double t = now();
        if (a.phase == RUNNING && t >= a.deadline) {
            step_done(&a);
            continue;
        }
        if ((a.phase == WAIT_START || a.phase == WAIT_FINAL) && a.connected
            && t - a.sent_at > REPLY_TIMEOUT) {
            say(&a, "no reply in %.0f s, asking for the next job again", REPLY_TIMEOUT);
            a.job_id[0] = '\0';
            start_next(&a);
        }
        double wait = a.phase == RUNNING ? a.deadline - t : 0.1;
        int ms = wait < 0.001 ? 1 : wait > 0.1 ? 100 : (int)(wait * 1000) + 1;
        if (mosquitto_socket(a.m) >= 0) {
            if (mosquitto_loop(a.m, ms, 1) != MOSQ_ERR_SUCCESS) {
                on_disconnect(a.m, &a, MOSQ_ERR_CONN_LOST); /* prints once, if not yet */
                a.next_reconnect = now() + 1;
            }
        } else if (t < a.next_reconnect) {
            usleep((useconds_t)ms * 1000);
        } else {
            a.next_reconnect = t + 1; /* once a second until the broker takes us back; */
            mosquitto_reconnect(a.m);  /* on_connect then re-subscribes and start-nexts */
        }
    }
    say(&a, "stopping (%d job%s started)", a.jobs_started, a.jobs_started == 1 ? "" : "s");
    mosquitto_disconnect(a.m);
    mosquitto_loop(a.m, 100, 1);
    mosquitto_destroy(a.m);
    mosquitto_lib_cleanup();
    return 0;
}

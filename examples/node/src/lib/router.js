'use strict';

const { slugify } = require('./slugify');

// Pure request handling (no sockets), so it is testable: returns { status, headers, body }.
function handle(method, rawUrl, { version = 'dev', startedAt = Date.now() } = {}) {
  const url = new URL(rawUrl, 'http://localhost');
  const json = (status, obj) => ({
    status,
    headers: { 'content-type': 'application/json; charset=utf-8' },
    body: JSON.stringify(obj) + '\n',
  });
  if (method !== 'GET' && method !== 'HEAD') return json(405, { error: 'method not allowed' });
  switch (url.pathname) {
    case '/healthz':
      return json(200, { status: 'ok', version, uptimeMs: Date.now() - startedAt });
    case '/slug': {
      const text = url.searchParams.get('text');
      if (!text) return json(400, { error: 'missing ?text=' });
      return json(200, { text, slug: slugify(text) });
    }
    default:
      return json(404, { error: `no route for ${url.pathname}` });
  }
}

module.exports = { handle };

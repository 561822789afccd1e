'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { handle } = require('../src/lib/router');

test('GET /healthz reports ok and the version', () => {
  const r = handle('GET', '/healthz', { version: '1.2.3' });
  assert.equal(r.status, 200);
  assert.equal(JSON.parse(r.body).version, '1.2.3');
});

test('GET /slug slugifies its query', () => {
  const r = handle('GET', '/slug?text=Hello%20Memo%20Build');
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.body), { text: 'Hello Memo Build', slug: 'hello-memo-build' });
  assert.equal(handle('GET', '/slug').status, 400);
});

test('unknown routes and methods', () => {
  assert.equal(handle('GET', '/nope').status, 404);
  assert.equal(handle('POST', '/healthz').status, 405);
});

'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { slugify } = require('../src/lib/slugify');

test('slugify lowercases, strips accents and punctuation', () => {
  assert.equal(slugify('Héllo, World!'), 'hello-world');
  assert.equal(slugify('  --Already-a-slug--  '), 'already-a-slug');
  assert.equal(slugify('ÜBER   café 2024'), 'uber-cafe-2024');
});

test('slugify truncates without a trailing dash', () => {
  assert.equal(slugify('abc def ghi', { maxLength: 4 }), 'abc');
  assert.equal(slugify(''), '');
});

'use strict';

// Turns free text into a URL slug: "Héllo, World!" -> "hello-world".
function slugify(text, { maxLength = 64 } = {}) {
  const slug = String(text)
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return slug.slice(0, maxLength).replace(/-+$/, '');
}

module.exports = { slugify };

// The resources a session's agent carries: skills (a version record and a generated .tar.gz per skill) and memory
// stores (memories by id, enough for the SDK's memory sync), with their endpoints.
// Invariants: skill content is served only for the exact version id (`latest` resolves only the version record);
// a memory path is absolute and unique within its store (a second create at a path is a 409); an update with a
// `content_sha256` precondition that does not match changes nothing (409). Which session may reach which resource
// is decided by the server's auth, not here.
import { createHash } from 'node:crypto';
import { HttpError } from './wire-rules';
import { iso, isObj, rid, type Reply } from './reply';
import { tarGz } from './tar';

interface Memory { id: string; path: string; content: string }

export interface SkillRef { skill_id: string; name: string }
export interface MemoryStoreRef { memory_store_id: string; name: string; access: 'read_write' | 'read_only' }

export class Resources {
  private readonly skills = new Map<string, { name: string; versionId: string; archive: Buffer }>();
  private readonly memories = new Map<string, Map<string, Memory>>();

  /** A new skill whose archive holds `files` (relative path -> content) under the directory `name/`. */
  addSkill(name: string, files: Record<string, string>): SkillRef {
    const skill_id = rid('skill_local');
    const archive = tarGz(Object.fromEntries(Object.entries(files).map(([p, c]) => [`${name}/${p}`, c])));
    this.skills.set(skill_id, { name, versionId: rid('skillver_local'), archive });
    return { skill_id, name };
  }

  /** A new memory store holding `memories` (path -> content). */
  addMemoryStore(name: string, access: MemoryStoreRef['access'], memories: Record<string, string>): MemoryStoreRef {
    const memory_store_id = rid('memstore_local');
    const store = this.store(memory_store_id);
    for (const [p, content] of Object.entries(memories)) { const m = { id: rid('mem_local'), path: p, content }; store.set(m.id, m); }
    return { memory_store_id, name, access };
  }

  /** A store's memories as path -> content. */
  memoryContents(storeId: string): Record<string, string> {
    return Object.fromEntries([...this.store(storeId).values()].map((m) => [m.path, m.content]));
  }

  // ---- skills endpoints --------------------------------------------------------------------------------------------

  skillVersion(skillId: string, version: string): Reply {
    const sk = this.skills.get(skillId);
    if (!sk || (version !== 'latest' && version !== sk.versionId)) throw new HttpError(404, 'not_found_error', `skill version ${skillId}/${version} not found`);
    return { status: 200, body: { id: sk.versionId, type: 'skill_version', skill_id: skillId, name: sk.name, version: '1', description: `generated skill ${sk.name}`, directory: sk.name, created_at: iso() } };
  }

  skillContent(skillId: string, version: string): Reply {
    const sk = this.skills.get(skillId);
    if (!sk || version !== sk.versionId) throw new HttpError(404, 'not_found_error', `skill version ${skillId}/${version} not found`);
    return { status: 200, body: sk.archive };
  }

  // ---- memory endpoints --------------------------------------------------------------------------------------------

  memList(storeId: string, url: URL): Reply {
    const full = url.searchParams.get('view') === 'full';
    const prefix = url.searchParams.get('path_prefix') ?? '';
    const data = [...this.store(storeId).values()].filter((m) => m.path.startsWith(prefix)).map((m) => memJson(storeId, m, full));
    return { status: 200, body: { data, next_page: null } };
  }

  memGet(storeId: string, memId: string): Reply {
    const m = this.store(storeId).get(memId);
    if (!m) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    return { status: 200, body: memJson(storeId, m, true) };
  }

  memCreate(storeId: string, body: unknown): Reply {
    if (!isObj(body) || typeof body.path !== 'string' || !body.path.startsWith('/') || typeof body.content !== 'string') throw new HttpError(400, 'invalid_request_error', 'path (absolute) and content are required');
    const store = this.store(storeId);
    if ([...store.values()].some((m) => m.path === body.path)) throw new HttpError(409, 'invalid_request_error', `a memory already exists at ${body.path}`);
    const m = { id: rid('mem_local'), path: body.path, content: body.content };
    store.set(m.id, m);
    return { status: 200, body: memJson(storeId, m, true) };
  }

  memUpdate(storeId: string, memId: string, body: unknown): Reply {
    const m = this.store(storeId).get(memId);
    if (!m) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    if (!isObj(body)) throw new HttpError(400, 'invalid_request_error', 'body must be an object');
    const pre = isObj(body.precondition) ? body.precondition.content_sha256 : undefined;
    if (typeof pre === 'string' && pre !== sha256(m.content)) throw new HttpError(409, 'invalid_request_error', 'content_sha256 precondition failed');
    if (typeof body.content === 'string') m.content = body.content;
    if (typeof body.path === 'string') m.path = body.path;
    return { status: 200, body: memJson(storeId, m, true) };
  }

  memDelete(storeId: string, memId: string): Reply {
    if (!this.store(storeId).delete(memId)) throw new HttpError(404, 'not_found_error', `memory ${memId} not found`);
    return { status: 200, body: { id: memId, type: 'memory_deleted' } };
  }

  private store(id: string): Map<string, Memory> {
    let m = this.memories.get(id);
    if (!m) { m = new Map(); this.memories.set(id, m); }
    return m;
  }
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

function memJson(storeId: string, m: Memory, full: boolean) {
  return { id: m.id, type: 'memory', memory_store_id: storeId, path: m.path, content_sha256: sha256(m.content), content_size_bytes: Buffer.byteLength(m.content), created_at: iso(), updated_at: iso(), ...(full ? { content: m.content } : {}) };
}

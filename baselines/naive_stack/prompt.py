"""Chat-template prompt with the video placeholder, built as our engine builds it (unifiedserve/input_processor.py).

Same template call and the same placeholder expansion, so the naive stack and UnifiedServe see identical
prompt tokens and a text-only greedy answer matches token for token.
"""

from __future__ import annotations

from unifiedserve.errors import InvalidRequestError


def prompt_token_ids(tokenizer, text: str, num_video_tokens: int | None, video_token_id: int) -> list[int]:
    """Token ids of the user turn; with a video, its one placeholder expanded to `num_video_tokens` copies."""
    has_video = num_video_tokens is not None
    if not text.strip() and not has_video:
        raise InvalidRequestError("text_input is empty: ask a question")
    content = [{"type": "video"}] if has_video else []
    content.append({"type": "text", "text": text})
    messages = [{"role": "user", "content": content}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    if not has_video:
        return ids
    positions = [i for i, t in enumerate(ids) if t == video_token_id]
    if len(positions) != 1:
        raise InvalidRequestError(f"prompt has {len(positions)} video placeholders, expected 1")
    pos = positions[0]
    return ids[:pos] + [video_token_id] * num_video_tokens + ids[pos + 1:]

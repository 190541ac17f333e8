"""The originals kun-ray reproduces, verbatim, for the tests to hold it to.

Humpback: Meta released no code; github.com/Spico197/Humback at 43c0086 is the reimplementation
whose rating prompt is the paper's Table 1 word for word (arXiv 2308.06259 v1).

COIG-Kun: github.com/Zheng0428/COIG-Kun at a9c6df13787e818f59797c306b74c0cfc40575e9 (Apache-2.0);
each string and function is cited by file and line.  The functions are copied as they are
(docstrings left out, formatted by ruff); `kun_instruction_cleaning` chains them as the scripts do.
"""

# ruff: noqa: E501, SIM108, PLW2901

import re

# evaluation/conversation.py:15-36, `pointPrompt` (the source lines end in backslashes, so the
# string has no newline of its own but those in examples 3-5; two U+200B around the first 【好】).
KUN_SCORE_RUBRIC = "评价指令质量。根据以下指令内容使用【好】或【差】进行评价，\u200b【好】\u200b的评判标准极为严格，对【差】则非常宽松。-高质量指令特性：明确性与精确性：清晰地陈述目标，提供详细的指令，并避免任何模糊的解释或术语。完整性：确保包含所有必要的信息，执行时不需要猜测。可行性：确保指令是实际的，并适合接收者的能力。逻辑顺序：按逻辑顺序描述步骤。-低质量指令特性：含隐私信息：如人名等。模糊和不明确：目标、步骤、要求或目的不清晰。信息问题：信息缺失、错误或过时。不切实际：超出执行者的能力或资源。复杂性：使用冗余的词汇、术语或涉及多模态内容，如图片或表格。逻辑混乱：步骤顺序不清或缺乏上下文背景。示例：-【请解释什么是“联合开发”，及其风险与收益。】答：【好】-【你认识黄丰吗？】答：【差】-【什么是排他性许可？ \n \n   -> 什么是  \n     什么是  \n 】答：【差】-【什么是民窿？  \n\n什么是民窿？】答：【差】-【教育具有哪些社会发展功能？\n \n \n \n \n \n \n教育具有哪些社会发展功能？】答：【差】-【教育具有哪些社会发展功能？】答：【好】-【帮我搜索一下“李四”的百度百科。】答：【差】"
# evaluation/common.py:129: the query after the rubric, on a line of its own.
KUN_SCORE_QUERY = "指令: 【{instruction}】 回复："
# evaluation/conversation.py:14, `labelPrompt`; the text follows on the next line (common.py:117-123).
KUN_LABEL_PROMPT = "请直接告诉我，以下回复最有可能对应的指令是什么："
# evaluation/conversation.py:435-449 (the role line "<|im_start|>user 已知：") and common.py:147.
KUN_POLISH_PREFIX = "已知："
KUN_POLISH_MESSAGE = "{output},请回答:{truncated_instruction}"
# Spico197/Humback data/prompts/self_curation.txt (1-11), as src/core/build_curation_dataset.py:9
# reads it (stripped) and fills it (lines 15-18).
HUMPBACK_CURATION = "Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a score using the following 5-point scale:\n1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. For example, some content seems missing, numbered list does not start from the beginning, the opening sentence repeats user's question. Or the response is from another person’s perspective with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation text, or other irrelevant information.\n2: It means the answer addresses most of the asks from the user. It does not directly address the user's question. For example, it only provides a high-level methodology instead of the exact solution to user's question.\n3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the user. It is complete and self contained with the drawback that the response is not written from an AI assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog post, web page, or web search results. For example, it contains personal experience or opinion, mentions comments section, or share on social media, etc.\n4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the instruction. It provide a complete, clear, and comprehensive response to user’s question or instruction without missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.\n5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, where the response looks like intentionally written to address the user's question or instruction without any irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.\n\nPlease first provide a brief reasoning you used to derive the rating score, and then write \"Score: <rating>\" in the last line.\n\n{generated_instruction}\n{response}\n"
# script/delete_key_input.py:55
KUN_INSTRUCTION_KEYWORDS = [
    "新闻",
    "材料",
    "图片",
    "链接",
    "网址",
    "根据",
    "简历",
    "简介",
    "文章",
    "摘要",
    "文本",
    "提取",
    "关键词",
    "网站",
]
# script/delete_key_output.py:186
KUN_ANSWER_KEYWORDS = ["作为", "根据", "知识库", "2023", "抱歉"]


# script/delete_key_output.py:3-15
def detect_repetition_improved(text, threshold=5):
    for i in range(1, len(text)):
        unit = text[:i]
        if text.startswith(unit * (threshold + 1)):
            return True, unit
    return False, None


# script/delete_key_output.py:42-62
def process_text(text):
    match = re.search(r"[\s\n]{5,}", text)
    if match:
        # Find the position where the long space or newline starts
        position = match.start()
        # Return the part of the sentence before the long space or newline
        return True, text[:position].strip()
    else:
        # If no long space or newline is found, return the original text
        return False, text.strip()


# script/delete_key_output.py:64-94
def remove_duplicates(text):
    sentences = text.split("\n")

    # Removing any extra spaces and filtering out empty sentences
    sentences = [s.strip() for s in sentences if s.strip()]

    # Counting duplicates using a dictionary
    sentence_counts = {}
    for sentence in sentences:
        if sentence in sentence_counts:
            sentence_counts[sentence] += 1
        else:
            sentence_counts[sentence] = 1

    # Check if duplicates were found
    duplicates_found = any(count > 1 for count in sentence_counts.values())
    if duplicates_found:
        duplicate_sentences = [sentence for sentence, count in sentence_counts.items() if count > 1]

        final_output = max(duplicate_sentences, key=len)
        return duplicates_found, final_output
    else:
        return duplicates_found, text


# script/delete_key_input.py:5-13
def remove_trailing_spaces_and_newlines(input_str):
    for i in range(len(input_str) - 1, -1, -1):
        if input_str[i] not in [" ", "\n"]:
            return input_str[: i + 1]
    return ""


def kun_instruction_cleaning(raw):
    """The label model's output through delete_key_input.py (line 29) and then the instruction
    branch of delete_key_output.py (lines 109-133, as it plainly intends: line 161 overwrote the
    instruction with the answer first).  None: the row is dropped."""
    instruction = remove_trailing_spaces_and_newlines(raw)
    error_found, instruction = process_text(instruction)
    if error_found:
        return instruction
    duplicates_found, fix_instruction = remove_duplicates(instruction)
    if duplicates_found:
        if fix_instruction == instruction[: len(fix_instruction)]:
            return fix_instruction
        return None
    return instruction

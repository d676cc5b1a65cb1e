"""Real Thai questions, written for this project (not a template): what a user of a Thai chat model asks.

The embedded default's TCOT prompts are loanword questions from one template,
the template its transfer stage trains on, so a format rate on them says the
template was learned. These ask about facts, cooking, health, travel, money,
writing and computers, so the report can say whether the format reaches
questions the training data never resembled (``eval.target_questions``), and,
with their English below, whether the English pivot restates the question.
"""

from __future__ import annotations

QUESTIONS = (
    "ประเทศไทยมีกี่จังหวัด",
    "ช่วยบอกวิธีทำต้มยำกุ้งหน่อยได้ไหม",
    "ทำไมท้องฟ้าถึงเป็นสีฟ้า",
    "ควรเตรียมตัวอย่างไรก่อนไปสัมภาษณ์งาน",
    "ช่วยแนะนำสถานที่ท่องเที่ยวในเชียงใหม่ให้หน่อย",
    "การออกกำลังกายทุกวันมีประโยชน์อย่างไร",
    "ฉันนอนไม่ค่อยหลับ มีวิธีแก้ไหม",
    "สงกรานต์คือเทศกาลอะไร และจัดขึ้นเมื่อไร",
    "ช่วยเขียนข้อความขอบคุณเพื่อนที่มาช่วยย้ายบ้านให้หน่อย",
    "ถ้าอยากเริ่มเก็บเงิน ควรเริ่มต้นอย่างไร",
    "คอมพิวเตอร์ของฉันช้ามาก ควรทำอย่างไรดี",
    "ข้าวเหนียวมะม่วงทำจากอะไรบ้าง",
    "แมวกับสุนัข สัตว์ชนิดไหนเลี้ยงง่ายกว่ากัน",
    "อธิบายความแตกต่างระหว่างสภาพอากาศกับภูมิอากาศ",
    "ทำไมเราต้องดื่มน้ำวันละหลายแก้ว",
    "แนะนำหนังสือสำหรับคนที่เพิ่งเริ่มเรียนเขียนโปรแกรมหน่อย",
    "แม่น้ำเจ้าพระยาไหลผ่านจังหวัดอะไรบ้าง",
    "การเปลี่ยนแปลงสภาพภูมิอากาศส่งผลต่อประเทศไทยอย่างไร",
    "ช่วยวางแผนเที่ยวภูเก็ตสามวันให้หน่อย",
    "วิธีดูแลต้นไม้ในคอนโดที่มีแดดน้อย",
    "โรคหวัดกับไข้หวัดใหญ่ต่างกันอย่างไร",
    "ภาษาไทยมีพยัญชนะกี่ตัว",
    "ช่วยอธิบายว่าดอกเบี้ยทบต้นคืออะไร",
    "ถ้าจะเดินทางจากกรุงเทพไปขอนแก่น ไปทางไหนได้บ้าง",
)

# The same questions in English, written for this project: the reference the English pivot is scored against
# (``pivot_chrf_questions``: is the model's <EN> query the question that was asked?).
ENGLISH = (
    "How many provinces does Thailand have?",
    "Could you tell me how to make tom yum goong?",
    "Why is the sky blue?",
    "How should I prepare before a job interview?",
    "Please recommend some places to visit in Chiang Mai.",
    "What are the benefits of exercising every day?",
    "I can hardly sleep. Is there a way to fix it?",
    "What festival is Songkran, and when is it held?",
    "Please write a thank-you message to a friend who helped me move house.",
    "If I want to start saving money, how should I begin?",
    "My computer is very slow. What should I do?",
    "What is mango sticky rice made of?",
    "Cats or dogs: which is easier to keep?",
    "Explain the difference between weather and climate.",
    "Why do we need to drink several glasses of water a day?",
    "Please recommend a book for someone who has just started learning to program.",
    "Which provinces does the Chao Phraya River flow through?",
    "How does climate change affect Thailand?",
    "Please plan a three-day trip to Phuket for me.",
    "How do I care for plants in a condo with little sunlight?",
    "How is a cold different from the flu?",
    "How many consonants does the Thai language have?",
    "Please explain what compound interest is.",
    "If I travel from Bangkok to Khon Kaen, which ways can I go?",
)

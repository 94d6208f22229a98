"""(placeholder: the transcriptions handler is being built)"""
